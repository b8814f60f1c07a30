//! The Postgres pool and migrations (the queue's, then trainyard's own).
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

use crate::config::DatabaseSettings;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Connects lazily-retrying: a pool reconnects by itself after Postgres restarts.
///
/// Every wait for a connection is bounded by `database.acquire_timeout_secs`: while Postgres
/// is down the pool keeps trying to connect (backing off) until then and gives up with
/// `PoolTimedOut`, which the API answers 503; the same bound applies when every pooled
/// connection is busy. Idle connections are checked before use, so the ones that died with a
/// restarted server are replaced instead of failing a request.
pub async fn connect(settings: &DatabaseSettings) -> anyhow::Result<PgPool> {
    let options: PgConnectOptions = settings
        .url
        .parse()
        .map_err(|e| anyhow::anyhow!("database.url is not a valid Postgres URL: {e}"))?;
    let pool = PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(Duration::from_secs_f64(settings.acquire_timeout_secs))
        .test_before_acquire(true)
        .connect_with(options)
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to the database (database.url): {e}"))?;
    Ok(pool)
}

/// A short, shared check that the database answers, for the health endpoints: each check waits
/// at most `timeout` (not the pool's acquire timeout) and its result is reused for `fresh_for`,
/// so probes during an outage answer fast and a burst of them runs one query, not one each.
pub struct DatabaseProbe {
    pool: PgPool,
    timeout: Duration,
    fresh_for: Duration,
    /// The last check: when it ended and what it found. Held while a check runs, so concurrent
    /// callers wait for that check instead of starting their own.
    last: tokio::sync::Mutex<Option<(std::time::Instant, Reachability)>>,
}

/// What one check found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Reachability {
    /// `SELECT 1` answered; its round trip in milliseconds.
    Reachable { latency_ms: f64 },
    /// An error, or no answer within the probe's timeout.
    Unavailable,
}

impl Reachability {
    pub fn is_reachable(&self) -> bool {
        matches!(self, Reachability::Reachable { .. })
    }
}

impl DatabaseProbe {
    /// Checks last at most `timeout`; a result is reused for `fresh_for`.
    pub fn new(pool: PgPool, timeout: Duration, fresh_for: Duration) -> DatabaseProbe {
        DatabaseProbe {
            pool,
            timeout,
            fresh_for,
            last: tokio::sync::Mutex::new(None),
        }
    }

    /// The database's state now, or as of a check that ended less than `fresh_for` ago.
    pub async fn check(&self) -> Reachability {
        let mut last = self.last.lock().await;
        if let Some((at, found)) = *last {
            if at.elapsed() < self.fresh_for {
                return found;
            }
        }
        let started = std::time::Instant::now();
        let answer =
            tokio::time::timeout(self.timeout, sqlx::query("SELECT 1").execute(&self.pool));
        let found = match answer.await {
            Ok(Ok(_)) => Reachability::Reachable {
                latency_ms: started.elapsed().as_secs_f64() * 1000.0,
            },
            Ok(Err(e)) => {
                tracing::debug!("health probe: database unavailable: {e}");
                Reachability::Unavailable
            }
            Err(_) => {
                tracing::debug!(
                    "health probe: no answer from the database in {:?}",
                    self.timeout
                );
                Reachability::Unavailable
            }
        };
        *last = Some((std::time::Instant::now(), found));
        found
    }
}

/// Applies apalis's migrations (schema `apalis`) and then ours. Idempotent.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::query("CREATE EXTENSION IF NOT EXISTS hstore")
        .execute(pool)
        .await?;
    sqlx::query("CREATE EXTENSION IF NOT EXISTS pgcrypto")
        .execute(pool)
        .await?;
    crate::queue::migrate(pool).await?;
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// (applied, known) counts of trainyard's own migrations, for `doctor` and health.
pub async fn migration_state(pool: &PgPool) -> anyhow::Result<(usize, usize)> {
    let known = MIGRATOR.iter().count();
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(pool)
        .await
        .unwrap_or(0);
    Ok((applied as usize, known))
}

/// Whether an error means "the database is not reachable right now" (down, restarting, every
/// connection busy, the connection cut) rather than a fault in the query or the data: such
/// errors are worth retrying later and are answered 503, not 500.
///
/// SQLSTATE class 08 is a connection exception; 57P01/57P02/57P03 are a server shutting down
/// (`terminating connection due to administrator command`), crashing, or still starting;
/// 53300 is too many connections.
pub fn is_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::BeginFailed => true,
        // The server closed the socket mid-message (sqlx reports some of these as protocol
        // errors rather than I/O errors).
        sqlx::Error::Protocol(message) => {
            let m = message.to_ascii_lowercase();
            m.contains("eof") || m.contains("connection") || m.contains("closed")
        }
        sqlx::Error::Database(db) => db.code().is_some_and(|code| is_unavailable_sqlstate(&code)),
        _ => false,
    }
}

fn is_unavailable_sqlstate(code: &str) -> bool {
    code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "53300")
}

/// A database error that trying again cannot cure: the code asked for something that is not
/// there or does not fit (a column that does not decode into its type, `RowNotFound` from a
/// query whose row must exist), or the data breaks a rule (a constraint violation, a value out
/// of range). Anything else (connections, the pool, I/O, a restarting server, lock timeouts,
/// deadlocks, serialization failures, and whatever is not known here) is worth a retry.
pub fn is_permanent(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::RowNotFound
        | sqlx::Error::TypeNotFound { .. }
        | sqlx::Error::ColumnIndexOutOfBounds { .. }
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::Encode(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| is_bad_data_sqlstate(&code)),
        _ => false,
    }
}

/// SQLSTATE classes 22 (data exception: a value out of range, invalid text for its type) and
/// 23 (integrity constraint violation: unique, foreign key, not null, check).
pub fn is_bad_data_sqlstate(code: &str) -> bool {
    code.starts_with("22") || code.starts_with("23")
}

/// Declares a status enum stored in a `TEXT` column (whose `CHECK` constraint lists the same
/// strings): `as_str`, `parse`, `Display`, serde as the string, and sqlx `Type`/`Encode`/`Decode`,
/// so rows carry the enum and code compares variants, never strings. A string the enum does not
/// know is a decode error (a bug), not a silent fallback.
macro_rules! text_enum {
    ($(#[$meta:meta])* $vis:vis enum $name:ident {
        $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)?
    }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $name { $($(#[$vmeta])* $variant),+ }

        impl $name {
            /// The stored string.
            pub const fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            pub fn parse(text: &str) -> Option<Self> {
                match text { $($text => Some($name::$variant),)+ _ => None }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl sqlx::Type<sqlx::Postgres> for $name {
            fn type_info() -> sqlx::postgres::PgTypeInfo {
                <&str as sqlx::Type<sqlx::Postgres>>::type_info()
            }
            fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
                <&str as sqlx::Type<sqlx::Postgres>>::compatible(ty)
            }
        }

        impl<'r> sqlx::Decode<'r, sqlx::Postgres> for $name {
            fn decode(
                value: sqlx::postgres::PgValueRef<'r>,
            ) -> Result<Self, sqlx::error::BoxDynError> {
                let text = <&str as sqlx::Decode<sqlx::Postgres>>::decode(value)?;
                Self::parse(text)
                    .ok_or_else(|| format!("unknown {} `{text}`", stringify!($name)).into())
            }
        }

        impl sqlx::Encode<'_, sqlx::Postgres> for $name {
            fn encode_by_ref(
                &self,
                buf: &mut sqlx::postgres::PgArgumentBuffer,
            ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                <&str as sqlx::Encode<sqlx::Postgres>>::encode_by_ref(&self.as_str(), buf)
            }
        }
    };
}
pub(crate) use text_enum;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_faults_are_unavailable_and_query_faults_are_not() {
        assert!(is_unavailable(&sqlx::Error::PoolTimedOut));
        assert!(is_unavailable(&sqlx::Error::Io(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset
        ))));
        assert!(!is_unavailable(&sqlx::Error::RowNotFound));
        assert!(!is_unavailable(&sqlx::Error::Protocol(
            "unknown message type".into()
        )));
        for code in ["08006", "08001", "57P01", "57P02", "57P03", "53300"] {
            assert!(is_unavailable_sqlstate(code), "{code}");
        }
        for code in ["23505", "42P01", "57014", "40001"] {
            assert!(!is_unavailable_sqlstate(code), "{code}");
        }
    }
}

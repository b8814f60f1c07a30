//! The one HTTP error type: every failure becomes `{"error": {code, message, type, param}}`.
//!
//! The shape is OpenAI's error object (so `/v1/embeddings` clients understand it) with a
//! machine-readable `code`. A server fault is logged once here and answered without internals.
use poem::http::StatusCode;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object};

#[derive(Debug, Clone, Object)]
pub struct ErrorDetail {
    /// Machine-readable error code, e.g. `not_found`, `invalid_request`, `unknown_model`.
    pub code: String,
    /// What is wrong, for a person.
    pub message: String,
    /// OpenAI-style error class: `invalid_request_error`, `not_found_error`, `conflict_error`,
    /// `server_error`.
    #[oai(rename = "type")]
    pub kind: String,
    /// The request field at fault, when there is one.
    #[oai(nullable)]
    pub param: Option<String>,
}

#[derive(Debug, Clone, Object)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, ApiResponse)]
pub enum ApiError {
    /// The request is malformed or a value is out of range.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// The token lacks a scope that an option of this request needs.
    #[oai(status = 403)]
    Forbidden(Json<ErrorBody>),
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    /// The resource's state does not allow this action.
    #[oai(status = 409)]
    Conflict(Json<ErrorBody>),
    #[oai(status = 413)]
    TooLarge(Json<ErrorBody>),
    /// The body is not `application/json` (or has no content type).
    #[oai(status = 415)]
    UnsupportedMediaType(Json<ErrorBody>),
    /// Well-formed but semantically invalid (unknown model, unknown label, ...).
    #[oai(status = 422)]
    Unprocessable(Json<ErrorBody>),
    #[oai(status = 500)]
    Internal(Json<ErrorBody>),
    /// A dependency (database, model) is not available right now, or the server is busy with
    /// as many expensive requests as it takes at once; retry later (after `Retry-After`
    /// seconds when given).
    #[oai(status = 503)]
    Unavailable(
        Json<ErrorBody>,
        /// Seconds to wait before retrying (sent when the server is busy).
        #[oai(header = "Retry-After")]
        Option<u64>,
    ),
}

fn body(
    code: &str,
    kind: &str,
    message: impl Into<String>,
    param: Option<&str>,
) -> Json<ErrorBody> {
    Json(ErrorBody {
        error: ErrorDetail {
            code: code.into(),
            message: message.into(),
            kind: kind.into(),
            param: param.map(str::to_string),
        },
    })
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>, param: Option<&str>) -> Self {
        ApiError::BadRequest(body(
            "invalid_request",
            "invalid_request_error",
            message,
            param,
        ))
    }
    pub fn not_found(what: &str, id: impl std::fmt::Display) -> Self {
        ApiError::NotFound(body(
            "not_found",
            "not_found_error",
            format!("{what} {id} not found"),
            None,
        ))
    }
    pub fn insufficient_scope(message: impl Into<String>, param: Option<&str>) -> Self {
        ApiError::Forbidden(body(
            "insufficient_scope",
            "permission_error",
            message,
            param,
        ))
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        ApiError::Conflict(body("conflict", "conflict_error", message, None))
    }
    /// 409 with a code that says which state refused the action (`lease_lost`, ...).
    pub fn conflict_code(code: &str, message: impl Into<String>, param: Option<&str>) -> Self {
        ApiError::Conflict(body(code, "conflict_error", message, param))
    }
    pub fn too_large(message: impl Into<String>, param: Option<&str>) -> Self {
        ApiError::TooLarge(body("too_large", "invalid_request_error", message, param))
    }
    pub fn unprocessable(code: &str, message: impl Into<String>, param: Option<&str>) -> Self {
        ApiError::Unprocessable(body(code, "invalid_request_error", message, param))
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        ApiError::Unavailable(body("unavailable", "server_error", message, None), None)
    }
    /// 503 `busy` with `Retry-After`: the process already runs as many expensive requests
    /// (exports, the review queue) as `server.max_concurrent_heavy_requests` allows.
    pub fn busy(what: &str, retry_after_secs: u64) -> Self {
        ApiError::Unavailable(
            body(
                "busy",
                "server_error",
                format!(
                    "this server is already running as many {what} as it takes at once; retry \
                     in {retry_after_secs} s"
                ),
                None,
            ),
            Some(retry_after_secs),
        )
    }
    /// 503 for something this server cannot do right now whose cause names server internals
    /// (file paths, library errors): the cause is logged once under a reference, the answer
    /// carries `public` and the reference only.
    pub fn unavailable_logged(public: impl Into<String>, cause: impl std::fmt::Display) -> Self {
        let id = uuid::Uuid::new_v4();
        let public = public.into();
        tracing::warn!(error_id = %id, "{public}: {cause}");
        ApiError::Unavailable(
            body(
                "unavailable",
                "server_error",
                format!("{public} (reference {id}; the cause is in the server log)"),
                None,
            ),
            None,
        )
    }
    /// Logs the cause once and answers without it.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        let id = uuid::Uuid::new_v4();
        tracing::error!(error_id = %id, "server fault: {cause}");
        ApiError::Internal(body(
            "internal",
            "server_error",
            format!("internal server error (reference {id})"),
            None,
        ))
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        if crate::db::is_unavailable(&e) {
            // Down, restarting, connection cut, or every pooled connection busy: the request
            // may succeed if retried, so 503 (logged as a warning, not as a server fault).
            tracing::warn!("database unavailable: {e}");
            let message = if matches!(e, sqlx::Error::PoolTimedOut) {
                "the database did not answer in time (unreachable, or every connection is busy); retry shortly"
            } else {
                "the database connection failed (the server is down or restarting); retry shortly"
            };
            return ApiError::Unavailable(
                body("database_unavailable", "server_error", message, None),
                None,
            );
        }
        ApiError::internal(e)
    }
}

impl From<crate::queue::QueueError> for ApiError {
    fn from(e: crate::queue::QueueError) -> Self {
        use crate::queue::QueueError;
        match e {
            QueueError::NotFound(id) => ApiError::not_found("job", id),
            QueueError::Conflict { .. } => ApiError::conflict(e.to_string()),
            QueueError::Database(db) => db.into(),
            QueueError::Serialization(_) | QueueError::Apalis(_) => ApiError::internal(e),
        }
    }
}

/// A scoring failure is answered as the database or queue error it wraps was before it had its
/// own type; the kinds only a running job meets are server faults.
impl From<crate::scoring::ScoringError> for ApiError {
    fn from(e: crate::scoring::ScoringError) -> Self {
        use crate::scoring::ScoringError;
        match e {
            ScoringError::Database(db) => db.into(),
            ScoringError::Queue(queue) => queue.into(),
            ScoringError::Conflict(message) => ApiError::conflict(message),
            other => ApiError::internal(other),
        }
    }
}

impl From<crate::job_kind::LifecycleError> for ApiError {
    fn from(e: crate::job_kind::LifecycleError) -> Self {
        use crate::job_kind::LifecycleError;
        match e {
            LifecycleError::Conflict(message) => ApiError::conflict(message),
            LifecycleError::Queue(e) => e.into(),
        }
    }
}

/// A training failure is answered as the run, database and queue errors it wraps were before it
/// had its own type (a missing run 404, a refused cancel 409); the gate's scoring errors as
/// scoring's; the kinds only a running job meets are server faults.
impl From<crate::training::TrainingError> for ApiError {
    fn from(e: crate::training::TrainingError) -> Self {
        use crate::training::TrainingError;
        match e {
            TrainingError::NotFound(id) => ApiError::not_found("training run", id),
            TrainingError::Conflict(message) => ApiError::conflict(message),
            TrainingError::Queue(e) => e.into(),
            TrainingError::Database(e) => e.into(),
            TrainingError::Scoring(e) => e.into(),
            other => ApiError::internal(other),
        }
    }
}

/// Turns errors raised outside handlers (unparseable JSON, unknown route, body limit) into the
/// same JSON shape.
pub async fn poem_error_to_json(err: poem::Error) -> poem::Response {
    let status = err.status();
    let text = err.to_string();
    let response = err.into_response();
    // Our own ApiError responses already carry the JSON body: pass them through.
    if response
        .content_type()
        .is_some_and(|c| c.starts_with("application/json"))
    {
        return response;
    }
    let (code, kind) = match status {
        StatusCode::NOT_FOUND => ("not_found", "not_found_error"),
        StatusCode::METHOD_NOT_ALLOWED => ("method_not_allowed", "invalid_request_error"),
        StatusCode::PAYLOAD_TOO_LARGE => ("too_large", "invalid_request_error"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ("unsupported_media_type", "invalid_request_error"),
        s if s.is_server_error() => ("internal", "server_error"),
        _ => ("invalid_request", "invalid_request_error"),
    };
    let message = if status.is_server_error() {
        tracing::error!("server fault: {text}");
        "internal server error".to_string()
    } else if status == StatusCode::NOT_FOUND {
        "no such route".to_string()
    } else {
        text
    };
    let json = serde_json::json!({"error": {"code": code, "message": message, "type": kind, "param": null}});
    poem::Response::builder()
        .status(status)
        .content_type("application/json")
        .body(json.to_string())
}

impl ApiError {
    /// OpenAI's answer for an unknown model: 404 `model_not_found`.
    pub fn model_not_found(model: &str) -> Self {
        ApiError::NotFound(body(
            "model_not_found",
            "invalid_request_error",
            format!("The model `{model}` does not exist or is not served here"),
            Some("model"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::QueueError;

    fn status_and_code(e: ApiError) -> (u16, String) {
        let (status, body) = match e {
            ApiError::Unavailable(b, _) => (503, b),
            ApiError::Internal(b) => (500, b),
            other => panic!("unexpected {other:?}"),
        };
        (status, body.0.error.code)
    }

    #[test]
    fn an_enqueue_that_loses_the_database_is_a_503_and_a_serialization_bug_a_500() {
        // `queue::enqueue` turns push_tasks's sqlx error into `QueueError::Database`.
        for lost in [
            sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset)),
            sqlx::Error::PoolTimedOut,
        ] {
            assert_eq!(
                status_and_code(QueueError::Database(lost).into()),
                (503, "database_unavailable".to_string())
            );
        }
        assert_eq!(
            status_and_code(QueueError::Database(sqlx::Error::RowNotFound).into()),
            (500, "internal".to_string())
        );
        let json = serde_json::from_str::<u8>("x").unwrap_err();
        assert_eq!(
            status_and_code(QueueError::Serialization(json).into()),
            (500, "internal".to_string())
        );
    }

    #[test]
    fn a_refused_cancel_or_retry_is_a_409_and_its_database_errors_answer_like_any_other() {
        use crate::job_kind::LifecycleError;
        let message = "its evaluation is cancelled: only a failed one is retried";
        match ApiError::from(LifecycleError::Conflict(message.into())) {
            ApiError::Conflict(b) => {
                assert_eq!(b.0.error.code, "conflict");
                assert_eq!(b.0.error.message, message);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(
            status_and_code(LifecycleError::from(sqlx::Error::PoolTimedOut).into()),
            (503, "database_unavailable".to_string())
        );
        assert_eq!(
            status_and_code(LifecycleError::from(sqlx::Error::RowNotFound).into()),
            (500, "internal".to_string())
        );
    }

    #[test]
    fn a_scoring_error_is_answered_as_the_error_it_wraps() {
        use crate::scoring::ScoringError;
        assert_eq!(
            status_and_code(ScoringError::Database(sqlx::Error::PoolTimedOut).into()),
            status_and_code(sqlx::Error::PoolTimedOut.into())
        );
        assert_eq!(
            status_and_code(
                ScoringError::from(QueueError::Database(sqlx::Error::RowNotFound)).into()
            ),
            (500, "internal".to_string())
        );
        match ApiError::from(ScoringError::Queue(QueueError::NotFound("j1".into()))) {
            ApiError::NotFound(b) => assert_eq!(b.0.error.message, "job j1 not found"),
            other => panic!("unexpected {other:?}"),
        }
        let message = "its scoring job is cancelled: only a failed one is retried";
        match ApiError::from(ScoringError::Conflict(message.into())) {
            ApiError::Conflict(b) => {
                assert_eq!(b.0.error.code, "conflict");
                assert_eq!(b.0.error.message, message);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_training_error_is_answered_as_the_run_error_it_replaces() {
        use crate::training::TrainingError;
        let id = uuid::Uuid::nil();
        match ApiError::from(TrainingError::NotFound(id)) {
            ApiError::NotFound(b) => {
                assert_eq!(b.0.error.code, "not_found");
                assert_eq!(b.0.error.message, format!("training run {id} not found"));
            }
            other => panic!("unexpected {other:?}"),
        }
        let message = format!("training run {id} is succeeded: it cannot be cancelled");
        match ApiError::from(TrainingError::Conflict(message.clone())) {
            ApiError::Conflict(b) => {
                assert_eq!(b.0.error.code, "conflict");
                assert_eq!(b.0.error.message, message);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(
            status_and_code(TrainingError::Database(sqlx::Error::PoolTimedOut).into()),
            (503, "database_unavailable".to_string())
        );
        assert_eq!(
            status_and_code(
                TrainingError::from(QueueError::Database(sqlx::Error::RowNotFound)).into()
            ),
            (500, "internal".to_string())
        );
        match ApiError::from(TrainingError::Queue(QueueError::NotFound("j1".into()))) {
            ApiError::NotFound(b) => assert_eq!(b.0.error.message, "job j1 not found"),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(
            status_and_code(TrainingError::Transient("training thread".into()).into()),
            (500, "internal".to_string())
        );
    }
}

//! `/api/v1/jobs`: list, inspect, cancel and retry jobs of every kind.
use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::registry::{MetaSchema, MetaSchemaRef, Registry};
use poem_openapi::types::{ParseError, ParseFromJSON, ParseFromParameter, ParseResult, ToJSON};
use poem_openapi::{Enum, Object, OpenApi, Tags};
use trainyard_jobs::JobKind;

use super::errors::ApiError;
use super::{page_bounds, AppState};
use crate::queue::{self, JobView};

#[derive(Tags)]
enum ApiTags {
    /// Background jobs: dataset builds, embedding batches, training runs.
    Jobs,
}

#[derive(Debug, Object)]
pub struct Progress {
    pub done: i64,
    pub total: i64,
}

#[derive(Debug, Object)]
pub struct Job {
    /// ULID of the job (26 characters of Crockford base32).
    #[oai(validator(pattern = "^[0-7][0-9A-HJKMNP-TV-Z]{25}$"))]
    pub id: String,
    /// Job kind (= queue name), one of `JobKindName`.
    pub kind: String,
    /// queued | running | retrying | succeeded | failed | cancelled
    pub status: String,
    pub attempts: i32,
    pub max_attempts: i32,
    pub progress: Progress,
    /// The dataset a `dataset_build` or `embed` job works for (absent for other kinds).
    #[oai(skip_serializing_if_is_none)]
    pub dataset_id: Option<uuid::Uuid>,
    /// The scoring job a `score` job plans or scores a chunk of (absent for other kinds).
    #[oai(skip_serializing_if_is_none)]
    pub scoring_job_id: Option<uuid::Uuid>,
    /// The job's result when it succeeded.
    #[oai(nullable)]
    pub result: Option<serde_json::Value>,
    /// The last attempt's error, if it failed.
    #[oai(nullable)]
    pub last_error: Option<String>,
    #[oai(nullable)]
    pub created_at: Option<DateTime<Utc>>,
    #[oai(nullable)]
    pub started_at: Option<DateTime<Utc>>,
    #[oai(nullable)]
    pub finished_at: Option<DateTime<Utc>>,
    /// When the job may run next (later than now while it waits out a retry backoff).
    #[oai(nullable)]
    pub run_at: Option<DateTime<Utc>>,
    /// The worker holding the job.
    #[oai(nullable)]
    pub worker: Option<String>,
}

impl From<JobView> for Job {
    fn from(v: JobView) -> Self {
        Job {
            id: v.id,
            kind: v.kind,
            status: v.status.to_string(),
            attempts: v.attempts,
            max_attempts: v.max_attempts,
            progress: Progress {
                done: v.progress_done,
                total: v.progress_total,
            },
            dataset_id: v.dataset_id,
            scoring_job_id: v.scoring_job_id,
            result: v.result,
            last_error: v
                .last_error
                .map(|e| e.trim_start_matches("AbortError: ").to_string()),
            created_at: v.created_at,
            started_at: v.started_at,
            finished_at: v.finished_at,
            run_at: v.run_at,
            worker: v.worker,
        }
    }
}

#[derive(Debug, Object)]
pub struct JobPage {
    pub items: Vec<Job>,
    pub total: i64,
    pub limit: i64,
    pub offset: i64,
}

/// A job kind (= queue name), as the API names it: every kind of `JobKind::ALL`, so a kind
/// added to the registry is listed and accepted here without a change to this file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobKindName(pub JobKind);

impl poem_openapi::types::Type for JobKindName {
    const IS_REQUIRED: bool = true;
    type RawValueType = Self;
    type RawElementValueType = Self;

    fn name() -> std::borrow::Cow<'static, str> {
        "JobKindName".into()
    }

    fn as_raw_value(&self) -> Option<&Self> {
        Some(self)
    }

    fn schema_ref() -> MetaSchemaRef {
        MetaSchemaRef::Reference(Self::name().into_owned())
    }

    fn register(registry: &mut Registry) {
        registry.create_schema::<Self, _>(Self::name().into_owned(), |_| MetaSchema {
            description: Some("A job kind (= queue name)."),
            enum_items: JobKind::ALL
                .iter()
                .map(|k| serde_json::Value::from(k.queue()))
                .collect(),
            ..MetaSchema::new("string")
        });
    }

    fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a Self> + 'a> {
        Box::new(self.as_raw_value().into_iter())
    }
}

impl ParseFromParameter for JobKindName {
    fn parse_from_parameter(value: &str) -> ParseResult<Self> {
        JobKind::from_queue(value)
            .map(JobKindName)
            .ok_or_else(|| ParseError::custom("Expect a valid enumeration value."))
    }
}

impl ParseFromJSON for JobKindName {
    fn parse_from_json(value: Option<serde_json::Value>) -> ParseResult<Self> {
        let value = value.unwrap_or_default();
        match value.as_str().and_then(JobKind::from_queue) {
            Some(kind) => Ok(JobKindName(kind)),
            None => Err(ParseError::expected_type(value)),
        }
    }
}

impl ToJSON for JobKindName {
    fn to_json(&self) -> Option<serde_json::Value> {
        Some(self.0.queue().into())
    }
}

/// A job's state.
#[derive(Debug, Clone, Copy, Enum, PartialEq, Eq)]
#[oai(rename_all = "snake_case")]
pub enum JobStatusName {
    Queued,
    Running,
    Retrying,
    Succeeded,
    Failed,
    Cancelled,
}

impl From<JobStatusName> for queue::JobStatus {
    fn from(name: JobStatusName) -> Self {
        match name {
            JobStatusName::Queued => queue::JobStatus::Queued,
            JobStatusName::Running => queue::JobStatus::Running,
            JobStatusName::Retrying => queue::JobStatus::Retrying,
            JobStatusName::Succeeded => queue::JobStatus::Succeeded,
            JobStatusName::Failed => queue::JobStatus::Failed,
            JobStatusName::Cancelled => queue::JobStatus::Cancelled,
        }
    }
}

fn check_job_id(id: &str) -> Result<(), ApiError> {
    ulid::Ulid::from_string(id).map(|_| ()).map_err(|_| {
        ApiError::bad_request(
            format!("`{id}` is not a job id (a 26-character ULID)"),
            Some("id"),
        )
    })
}

pub struct JobsApi;

#[OpenApi(prefix_path = "/api/v1", tag = "ApiTags::Jobs")]
impl JobsApi {
    /// List jobs, newest first, optionally filtered by kind and status.
    #[oai(path = "/jobs", method = "get")]
    async fn list_jobs(
        &self,
        state: Data<&AppState>,
        /// Only jobs of this kind.
        kind: Query<Option<JobKindName>>,
        /// Only jobs in this state.
        status: Query<Option<JobStatusName>>,
        /// Page size, 1 to 1,000 (`server.page_size_max` may lower it); default 50.
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<Option<i64>>,
        /// Items to skip, >= 0; default 0.
        #[oai(validator(minimum(value = "0")))]
        offset: Query<Option<i64>>,
    ) -> Result<Json<JobPage>, ApiError> {
        let kind = kind.0.map(|k| k.0.queue());
        let status = status.0.map(queue::JobStatus::from);
        let (limit, offset) = page_bounds(&state, limit.0, offset.0)?;
        let (jobs, total) = queue::list_jobs(&state.pool, kind, status, limit, offset).await?;
        Ok(Json(JobPage {
            items: jobs.into_iter().map(Job::from).collect(),
            total,
            limit,
            offset,
        }))
    }

    /// One job: status, attempts, progress, result or last error, times.
    #[oai(path = "/jobs/:id", method = "get")]
    async fn get_job(
        &self,
        state: Data<&AppState>,
        /// The job's ULID (26 characters of Crockford base32).
        #[oai(validator(pattern = "^[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}$"))]
        id: Path<String>,
    ) -> Result<Json<Job>, ApiError> {
        check_job_id(&id)?;
        Ok(Json(queue::get_job(&state.pool, &id).await?.into()))
    }

    /// Cancel a job: a queued one never runs; a running one stops at its next checkpoint.
    /// Cancelling a dataset build cancels the dataset and its embedding jobs.
    #[oai(path = "/jobs/:id/cancel", method = "post")]
    async fn cancel_job(
        &self,
        state: Data<&AppState>,
        /// The job's ULID (26 characters of Crockford base32).
        #[oai(validator(pattern = "^[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}$"))]
        id: Path<String>,
    ) -> Result<Json<Job>, ApiError> {
        check_job_id(&id)?;
        Ok(Json(
            crate::job_registry::cancel(&state.pool, &id).await?.into(),
        ))
    }

    /// Put a failed or cancelled job back in its queue with a fresh attempt budget.
    #[oai(path = "/jobs/:id/retry", method = "post")]
    async fn retry_job(
        &self,
        state: Data<&AppState>,
        /// The job's ULID (26 characters of Crockford base32).
        #[oai(validator(pattern = "^[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}$"))]
        id: Path<String>,
    ) -> Result<Json<Job>, ApiError> {
        check_job_id(&id)?;
        Ok(Json(
            crate::job_registry::retry(&state.pool, &id).await?.into(),
        ))
    }
}

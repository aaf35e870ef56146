//! Errors as RFC 9457 problem details (`application/problem+json`).
//!
//! Every refusal the API gives is a [`Problem`]: an HTTP status, a stable
//! `type` URI naming the kind of failure (`urn:ahv:problem:<kind>`), a short
//! `title`, and a `detail` that names what was wrong and with which input —
//! for facade errors, the facade's own message, which names the session, the
//! agent and the rule. Messages never carry a bearer token: the token is
//! checked and dropped by [`crate::auth`] before any handler runs.

use ahv_governance::session::SessionError;
use ahv_hypervisor::HypervisorError;
use ahv_runtime::{AgentError, LoadError};
use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// An RFC 9457 problem details object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem (`urn:ahv:problem:<kind>`, RFC 9457 §3.1.1).
    #[serde(rename = "type")]
    pub kind: String,
    /// A short, human-readable summary of the kind (the same for every
    /// occurrence of the kind).
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong this time, naming the input.
    pub detail: String,
}

impl Problem {
    /// A problem of kind `kind` (the last part of its `urn:ahv:problem:` URI)
    /// with HTTP status `status`.
    pub fn new(status: StatusCode, kind: &str, title: &str, detail: impl Into<String>) -> Problem {
        Problem {
            kind: format!("urn:ahv:problem:{kind}"),
            title: title.to_string(),
            status: status.as_u16(),
            detail: detail.into(),
        }
    }

    /// 400: the request itself is malformed (a bad id, a bad field).
    pub fn bad_request(detail: impl Into<String>) -> Problem {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "bad-request",
            "The request is malformed",
            detail,
        )
    }

    /// 404: no such resource.
    pub fn not_found(detail: impl Into<String>) -> Problem {
        Problem::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "No such resource",
            detail,
        )
    }

    /// 401: no bearer token, or one the server does not know.
    pub fn unauthorized(detail: impl Into<String>) -> Problem {
        Problem::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Authentication required",
            detail,
        )
    }

    /// 403: the caller's role does not allow the operation.
    pub fn forbidden(detail: impl Into<String>) -> Problem {
        Problem::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "The caller's role does not allow this",
            detail,
        )
    }

    /// 429: the caller sent too many requests; retry after `retry_after_ms`.
    pub fn rate_limited(retry_after_ms: u64) -> Problem {
        Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate-limited",
            "Too many requests",
            format!("the caller's request budget is used up; retry in {retry_after_ms} ms"),
        )
    }

    /// 500: the server failed (its store, its audit log).
    pub fn internal(detail: impl Into<String>) -> Problem {
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "The server failed",
            detail,
        )
    }
}

/// The kind of a join refused while the agent's earlier participation ends.
const STILL_LEAVING: &str = "urn:ahv:problem:still-leaving";

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let retry = status == StatusCode::SERVICE_UNAVAILABLE || self.kind == STILL_LEAVING;
        let mut res = (status, Json(self)).into_response();
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if retry {
            // An instance, or an agent's earlier participation, may end at
            // any moment: a second is a fair wait.
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        res
    }
}

/// Facade errors keep their message (it names the session, the agent and
/// the rule); the status and kind follow from what failed.
impl From<HypervisorError> for Problem {
    fn from(e: HypervisorError) -> Problem {
        let detail = e.to_string();
        let (status, kind, title) = match &e {
            HypervisorError::UnknownSession { .. } => {
                (StatusCode::NOT_FOUND, "unknown-session", "No such session")
            }
            HypervisorError::Session(s) => match s {
                SessionError::InvalidConfig { .. } => (
                    StatusCode::BAD_REQUEST,
                    "invalid-session-config",
                    "The session configuration is invalid",
                ),
                SessionError::NotAParticipant { .. } => (
                    StatusCode::NOT_FOUND,
                    "not-a-participant",
                    "The agent is not a participant of the session",
                ),
                SessionError::ReservedAgentId { .. } => (
                    StatusCode::BAD_REQUEST,
                    "reserved-agent-id",
                    "The agent id is reserved for the hypervisor",
                ),
                _ => (
                    StatusCode::CONFLICT,
                    "session-rule",
                    "A session rule refused the operation",
                ),
            },
            HypervisorError::NoInstance { .. } => (
                StatusCode::CONFLICT,
                "no-instance",
                "The agent has no live instance",
            ),
            HypervisorError::Agent(a) => match a {
                AgentError::InputTooLarge { .. } => (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "input-too-large",
                    "The agent's input is too large",
                ),
                AgentError::Load(_) => (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "component-refused",
                    "The component was refused at admission",
                ),
                AgentError::AtCapacity { .. } => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "at-capacity",
                    "The host has no room for another instance now",
                ),
                AgentError::KillHandleMismatch { .. } => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "The server failed",
                ),
                _ => (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "agent-trapped",
                    "The agent's call failed",
                ),
            },
            HypervisorError::Load(l) => match l {
                LoadError::Cache { .. } => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "component-cache",
                    "The compiled-component cache failed",
                ),
                LoadError::Image { .. } => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "component-image",
                    "The host could not make the component's memory images",
                ),
                _ => (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "component-refused",
                    "The component was refused at admission",
                ),
            },
            HypervisorError::AdmissionDenied { .. } => (
                StatusCode::FORBIDDEN,
                "admission-denied",
                "The liability ledger refuses the agent",
            ),
            HypervisorError::Busy { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "agent-busy",
                "The agent's instance is busy with earlier calls (see Retry-After)",
            ),
            HypervisorError::StillLeaving { .. } => (
                StatusCode::CONFLICT,
                "still-leaving",
                "The agent's earlier participation is still ending (see Retry-After)",
            ),
            HypervisorError::Liability(_) | HypervisorError::Standing { .. } => (
                StatusCode::CONFLICT,
                "liability-rule",
                "A liability or standing rule refused the operation",
            ),
            HypervisorError::SagaSetup { .. } => (
                StatusCode::CONFLICT,
                "saga-setup",
                "The saga cannot run in this session",
            ),
            HypervisorError::Saga(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "saga",
                "The saga was refused or failed",
            ),
            HypervisorError::Attribution(_) => (
                StatusCode::CONFLICT,
                "attribution",
                "Blame could not be attributed",
            ),
            HypervisorError::Files { .. } => (
                StatusCode::CONFLICT,
                "files",
                "A session file operation failed",
            ),
            HypervisorError::Grant { .. }
            | HypervisorError::Policy(_)
            | HypervisorError::Security(_) => (
                StatusCode::BAD_REQUEST,
                "policy",
                "The policy refused the request",
            ),
            HypervisorError::Audit(ahv_audit::AuditError::DurableTimeout { .. }) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "seal-not-durable",
                "The session's seal is not on disk",
            ),
            HypervisorError::Ledger(_)
            | HypervisorError::Audit(_)
            | HypervisorError::Build(_)
            | HypervisorError::Setup(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "The server failed",
            ),
            // The facade's error enum is not exhaustive for us to know every
            // future variant; a new one is a server-side failure until mapped.
            #[allow(unreachable_patterns)]
            _ => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "The server failed",
            ),
        };
        Problem::new(status, kind, title, detail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ahv_core::SessionId;

    /// A join refused while the agent's earlier participation ends is a
    /// retryable conflict of its own kind, not a liability rule.
    #[test]
    fn a_busy_agent_is_503_with_retry_after() {
        let p = Problem::from(HypervisorError::Busy {
            session: SessionId::new("s3-x").unwrap(),
            agent: ahv_core::AgentId::new("did:test:a").unwrap(),
            waited: std::time::Duration::from_secs(30),
        });
        assert_eq!(p.status, 503);
        assert_eq!(p.kind, "urn:ahv:problem:agent-busy");
        assert!(
            p.detail.contains("did:test:a") && p.detail.contains("30s"),
            "{}",
            p.detail
        );
        assert_eq!(p.into_response().headers()[header::RETRY_AFTER], "1");
    }

    #[test]
    fn still_leaving_is_409_of_its_own_kind_with_retry_after() {
        let p = Problem::from(HypervisorError::StillLeaving {
            session: SessionId::new("s3-x").unwrap(),
            agent: ahv_core::AgentId::new("did:test:a").unwrap(),
        });
        assert_eq!(p.status, 409);
        assert_eq!(p.kind, "urn:ahv:problem:still-leaving");
        assert!(p.detail.contains("s3-x") && p.detail.contains("did:test:a"));
        let res = p.into_response();
        assert_eq!(res.headers()[header::RETRY_AFTER], "1");
        let other = Problem::from(HypervisorError::Liability("no".into())).into_response();
        assert!(!other.headers().contains_key(header::RETRY_AFTER));
    }

    #[test]
    fn unknown_session_is_404_and_names_the_session() {
        let p = Problem::from(HypervisorError::UnknownSession {
            session: "s9-x".into(),
        });
        assert_eq!(p.status, 404);
        assert_eq!(p.kind, "urn:ahv:problem:unknown-session");
        assert!(p.detail.contains("s9-x"), "{}", p.detail);
    }

    #[test]
    fn a_seal_not_on_disk_in_time_is_its_own_kind_naming_the_session_and_commitment() {
        let p = Problem::from(HypervisorError::Audit(
            ahv_audit::AuditError::DurableTimeout {
                session: "s7-x".into(),
                index: 41,
                waited: std::time::Duration::from_secs(10),
                last_error: Some("cannot sync record log".into()),
            },
        ));
        assert_eq!(p.status, 500);
        assert_eq!(p.kind, "urn:ahv:problem:seal-not-durable");
        assert!(
            p.detail.contains("s7-x") && p.detail.contains("#41"),
            "{}",
            p.detail
        );
    }

    #[test]
    fn problems_are_served_as_problem_json() {
        let res = Problem::forbidden("kill needs admin").into_response();
        assert_eq!(res.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            res.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
    }

    #[test]
    fn session_rules_are_conflicts() {
        let p = Problem::from(HypervisorError::NoInstance {
            session: SessionId::new("s1-a").unwrap(),
            agent: ahv_core::AgentId::new("did:ex:a").unwrap(),
        });
        assert_eq!(p.status, 409);
        assert!(p.detail.contains("did:ex:a"), "{}", p.detail);
    }
}

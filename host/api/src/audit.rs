//! The audit log: its status (key, counters, the latest signed head),
//! offline-grade verification of the live directory, and inclusion proofs.

use ahv_audit::verify::{prove, verify_dir};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::extract::{PathParams, QueryParams, RawBody};
use crate::problem::Problem;
use crate::{Auth, Shared, State, session_id};

/// A signed head of the commitment log.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct HeadView {
    /// How many commitments it covers.
    pub size: u64,
    /// The Merkle root over them, hex.
    pub root: String,
    /// When it was signed, ms since the Unix epoch.
    pub time_ms: u64,
    /// The Ed25519 signature, hex.
    pub signature: String,
}

/// The audit log's status.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AuditView {
    /// Whether the server audits at all.
    pub enabled: bool,
    /// The public key that signs heads, hex (pin it to verify offline).
    pub public_key: Option<String>,
    /// Deltas captured.
    pub captured: u64,
    /// Events after their session's commitment, not captured.
    pub late: u64,
    /// Failed background writes (each is retried).
    pub write_failures: u64,
    /// The last write error, if any.
    pub last_error: Option<String>,
    /// Bytes captured and not yet written (the backlog).
    pub backlog_bytes: u64,
    /// The latest signed head of the commitment log.
    pub signed_head: Option<HeadView>,
    /// The latest commitment sealing a session, as the event history holds it.
    pub last_commitment: Option<LastCommitment>,
}

/// A commitment sealing a session's audit log.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LastCommitment {
    /// The session it seals.
    pub session: Option<String>,
    /// Its index in the commitment log.
    pub index: u64,
    /// How many deltas it covers.
    pub tree_size: u64,
    /// The Merkle root over them, hex.
    pub root: String,
    /// Whether it is on disk yet (under group commit, a commitment is
    /// written at the end of the next flush round; a crash before then
    /// loses it).
    pub durable: bool,
}

fn last_commitment(s: &Shared, durable_commitments: u64) -> Option<LastCommitment> {
    let all =
        s.hv.events()
            .query(&ahv_core::EventQuery::default().kind(ahv_core::EventKind::AuditCommitted));
    let e = all.last()?;
    match &e.payload {
        ahv_core::EventPayload::AuditCommitted {
            tree_size,
            root,
            index,
        } => Some(LastCommitment {
            session: e.session.as_ref().map(ToString::to_string),
            index: *index,
            tree_size: *tree_size,
            root: hex::encode(root),
            durable: *index < durable_commitments,
        }),
        _ => None,
    }
}

fn auditor(s: &Shared) -> Result<&ahv_audit::Auditor, Problem> {
    s.hv.audit().ok_or_else(|| {
        Problem::new(
            axum::http::StatusCode::CONFLICT,
            "audit-off",
            "Auditing is off",
            "this server runs without an audit log",
        )
    })
}

/// The audit log's status.
#[utoipa::path(get, path = "/v1/audit", tag = "audit",
    responses((status = 200, body = AuditView)))]
pub(crate) async fn status(axum::extract::State(s): State, Auth(_c): Auth) -> Json<AuditView> {
    let Some(a) = s.hv.audit() else {
        return Json(AuditView {
            enabled: false,
            public_key: None,
            captured: 0,
            late: 0,
            write_failures: 0,
            last_error: None,
            backlog_bytes: 0,
            signed_head: None,
            last_commitment: None,
        });
    };
    let stats = a.stats();
    Json(AuditView {
        enabled: true,
        public_key: Some(a.public_key().to_hex()),
        captured: stats.captured,
        late: stats.late,
        write_failures: stats.write_failures,
        last_error: a.last_error(),
        backlog_bytes: stats.staged_bytes,
        last_commitment: last_commitment(&s, a.durable_commitments()),
        signed_head: a.latest_head().map(|h| HeadView {
            size: h.head.size,
            root: h.head.root.to_hex(),
            time_ms: h.head.time_ms,
            signature: hex::encode(h.signature),
        }),
    })
}

/// Which session to verify.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct VerifyQuery {
    /// Only this session (default: every session).
    session: Option<String>,
}

/// Verifies the server's audit directory as `ahv audit verify` does
/// offline, against the server's own key: every delta's hash chain and
/// Merkle tree against its session's commitment, the commitment log against
/// its signed head. Problems found are in the report (`ok: false`), not
/// errors.
#[utoipa::path(post, path = "/v1/audit/verify", tag = "audit",
    params(VerifyQuery),
    responses((status = 200, description = "The verification report", body = Object),
        (status = 409, body = Problem)))]
pub(crate) async fn verify(
    axum::extract::State(s): State,
    Auth(_c): Auth,
    QueryParams(q): QueryParams<VerifyQuery>,
    // Read and dropped, so the connection stays reusable.
    RawBody(_body): RawBody,
) -> Result<Json<serde_json::Value>, Problem> {
    let a = auditor(&s)?;
    if let Some(session) = &q.session {
        session_id(session)?;
    }
    let (dir, key) = (a.dir().to_path_buf(), *a.public_key());
    let hv = s.hv.clone();
    let _one_at_a_time = s
        .audits
        .acquire()
        .await
        .map_err(|e| Problem::internal(format!("waiting to verify: {e}")))?;
    // Reads and hashes every delta: off the async workers. What is staged
    // is written and a head signed first, so a session sealed a moment ago
    // verifies as sealed and signed.
    let report = crate::blocking("verifying", move || {
        if let Some(a) = hv.audit() {
            a.flush()
                .map_err(|e| Problem::internal(format!("writing the audit log: {e}")))?;
        }
        verify_dir(&dir, q.session.as_deref(), Some(&key))
            .map_err(|e| Problem::bad_request(e.to_string()))
    })
    .await??;
    let mut v: serde_json::Value = serde_json::from_str(&report.to_json())
        .map_err(|e| Problem::internal(format!("encoding the report: {e}")))?;
    v["ok"] = serde_json::Value::Bool(report.ok());
    Ok(Json(v))
}

/// Which delta to prove.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProofQuery {
    /// The delta's sequence number in its session's log (0 for the first).
    seq: u64,
}

/// An inclusion proof for one delta of a sealed session: the delta, its
/// path to the session's commitment, the commitment's path to a signed head
/// of the commitment log, and that head; `ahv audit verify --proof FILE`
/// checks it offline against a pinned key.
#[utoipa::path(get, path = "/v1/audit/sessions/{session}/proof", tag = "audit",
    params(("session" = String, Path), ProofQuery),
    responses((status = 200, description = "The proof", body = Object),
        (status = 404, body = Problem)))]
pub(crate) async fn proof(
    axum::extract::State(s): State,
    Auth(_c): Auth,
    PathParams(session): PathParams<String>,
    QueryParams(q): QueryParams<ProofQuery>,
) -> Result<Json<serde_json::Value>, Problem> {
    let a = auditor(&s)?;
    session_id(&session)?;
    let (dir, key) = (a.dir().to_path_buf(), *a.public_key());
    let seq = q.seq;
    let hv = s.hv.clone();
    let _one_at_a_time = s
        .audits
        .acquire()
        .await
        .map_err(|e| Problem::internal(format!("waiting to prove: {e}")))?;
    let p = crate::blocking("proving", move || {
        // A proof ends at a signed head: sign one over the commitments
        // sealed so far (a session sealed since the last head needs it).
        if let Some(a) = hv.audit() {
            a.flush()
                .map_err(|e| Problem::internal(format!("signing a head: {e}")))?;
        }
        prove(&dir, &session, seq, Some(&key)).map_err(|e| Problem::not_found(e.to_string()))
    })
    .await??;
    serde_json::to_value(&p)
        .map(Json)
        .map_err(|e| Problem::internal(format!("encoding the proof: {e}")))
}

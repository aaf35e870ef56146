//! Components: upload (admitted with the same checks as `ahv run`), list,
//! inspect. The server keeps admitted components in memory by the SHA-256 of
//! their bytes; joins name them by that id.

use std::sync::Arc;

use ahv_runtime::{ImportKind, Manifest};
use axum::Json;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use crate::extract::{PathParams, RawBody};
use crate::problem::Problem;
use crate::{Auth, Shared, State, Stored, Uploader};

/// Most components one server keeps (each holds its compiled code).
const MAX_COMPONENTS: usize = 1024;

/// One import of a component and what the host makes of it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ImportView {
    /// The full import name.
    pub name: String,
    /// `capability`, `types`, `wasi`, `wasi-denied` (linked, but every use
    /// fails with an error: the network) or `refused`.
    pub kind: String,
    /// For a capability, its name; for a denied or refused import, why.
    pub detail: Option<String>,
    /// For a capability, the least privileged ring that has it.
    pub ring: Option<u8>,
}

/// An admitted component.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ComponentView {
    /// Its id: the hex SHA-256 of its bytes.
    pub id: String,
    /// Its size in bytes.
    pub bytes: usize,
    /// Who uploaded it.
    pub uploaded_by: String,
    /// Its imports.
    pub imports: Vec<ImportView>,
    /// Its exports.
    pub exports: Vec<String>,
    /// The least privileged ring in which none of its imports is a breach
    /// (`None`: every ring treats some of its calls as breaches).
    pub lowest_ring: Option<u8>,
    /// Whether it exports the saga-participant hooks.
    pub saga_participant: bool,
}

fn imports(m: &Manifest) -> Vec<ImportView> {
    m.imports
        .iter()
        .map(|i| {
            let (kind, detail, ring) = match &i.kind {
                ImportKind::Capability(c) => (
                    "capability",
                    Some(c.to_string()),
                    Some(c.default_ring().number()),
                ),
                ImportKind::Types => ("types", None, None),
                ImportKind::Wasi => ("wasi", None, None),
                ImportKind::WasiDenied => (
                    "wasi-denied",
                    Some(
                        "linked, but every use fails with an error: no ring grants the network"
                            .into(),
                    ),
                    None,
                ),
                ImportKind::Refused { reason } => ("refused", Some(reason.clone()), None),
            };
            ImportView {
                name: i.name.clone(),
                kind: kind.into(),
                detail,
                ring,
            }
        })
        .collect()
}

fn view(id: &str, s: &Stored) -> ComponentView {
    let m = s.component.manifest();
    ComponentView {
        id: id.to_string(),
        bytes: s.bytes,
        uploaded_by: s.uploaded_by.clone(),
        imports: imports(m),
        exports: m.exports.clone(),
        lowest_ring: m.lowest_ring.map(|r| r.number()),
        saga_participant: s.component.saga_participant(),
    }
}

/// Uploads a component (`application/wasm` body). It is admitted with the
/// same checks as `ahv run`; a refused one gets the admission error, naming
/// the import or export at fault. Uploading the same bytes again returns
/// the same id.
#[utoipa::path(post, path = "/v1/components", tag = "components",
    request_body(content = Vec<u8>, content_type = "application/wasm"),
    responses(
        (status = 201, description = "Admitted", body = ComponentView),
        (status = 200, description = "Admitted before (the same bytes)", body = ComponentView),
        (status = 507, description = "The server holds as many components as it may", body = Problem),
        (status = 422, description = "Refused at admission", body = Problem),
        (status = 403, description = "Auditors may not upload", body = Problem)))]
pub(crate) async fn upload(
    axum::extract::State(s): State,
    Uploader(caller): Uploader,
    RawBody(body): RawBody,
) -> Result<(StatusCode, Json<ComponentView>), Problem> {
    let id = hex::encode(Sha256::digest(&body));
    if let Some(v) = read(&s).get(&id).map(|st| view(&id, st)) {
        return Ok((StatusCode::OK, Json(v)));
    }
    if read(&s).len() >= MAX_COMPONENTS {
        return Err(Problem::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "components-full",
            "The server holds as many components as it may",
            format!("the server holds {MAX_COMPONENTS} components; restart it to start afresh"),
        ));
    }
    let _compiling = s
        .compiles
        .acquire()
        .await
        .map_err(|e| Problem::internal(format!("waiting to compile: {e}")))?;
    let hv = s.hv.clone();
    let bytes = body.len();
    // Compiling takes tens of ms (seconds for a Python agent): off the
    // async workers.
    let component = crate::blocking("admitting the component", move || {
        hv.load(&body).map_err(Problem::from)
    })
    .await??;
    let stored = Stored {
        component,
        bytes,
        uploaded_by: caller.name.clone(),
    };
    let v = view(&id, &stored);
    s.components
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .entry(id)
        .or_insert(stored);
    Ok((StatusCode::CREATED, Json(v)))
}

fn read(s: &Shared) -> std::sync::RwLockReadGuard<'_, std::collections::BTreeMap<String, Stored>> {
    s.components.read().unwrap_or_else(|p| p.into_inner())
}

/// The admitted components.
#[utoipa::path(get, path = "/v1/components", tag = "components",
    responses((status = 200, body = Vec<ComponentView>)))]
pub(crate) async fn list(
    axum::extract::State(s): State,
    Auth(_caller): Auth,
) -> Json<Vec<ComponentView>> {
    Json(read(&s).iter().map(|(id, st)| view(id, st)).collect())
}

/// One admitted component.
#[utoipa::path(get, path = "/v1/components/{id}", tag = "components",
    params(("id" = String, Path, description = "The hex SHA-256 of the component's bytes")),
    responses((status = 200, body = ComponentView), (status = 404, body = Problem)))]
pub(crate) async fn show(
    axum::extract::State(s): State,
    Auth(_caller): Auth,
    PathParams(id): PathParams<String>,
) -> Result<Json<ComponentView>, Problem> {
    read(&s)
        .get(&id)
        .map(|st| Json(view(&id, st)))
        .ok_or_else(|| Problem::not_found(format!("no component {id:?} was uploaded")))
}

/// The admitted component `id`, for a join.
pub(crate) fn component(s: &Arc<Shared>, id: &str) -> Result<ahv_runtime::AgentComponent, Problem> {
    read(s)
        .get(id)
        .map(|st| st.component.clone())
        .ok_or_else(|| {
            Problem::not_found(format!(
                "no component {id:?} was uploaded (POST /v1/components first)"
            ))
        })
}

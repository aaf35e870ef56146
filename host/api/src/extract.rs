//! Request extractors whose refusals are problem details: axum's own
//! (`Json`, `Query`, `Path`, `Bytes`, `String`) answer a malformed request
//! with `text/plain`; these answer with [`Problem`], keeping axum's status
//! (400, 413, 415, 422) and its message, which names the field at fault.

use axum::extract::rejection::{
    BytesRejection, JsonRejection, PathRejection, QueryRejection, StringRejection,
};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::problem::Problem;

fn problem(status: StatusCode, what: &str, text: String) -> Problem {
    let (kind, title) = match status {
        StatusCode::PAYLOAD_TOO_LARGE => ("too-large", "The request body is too large"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ("media-type", "The request body has the wrong type"),
        _ => ("bad-request", "The request is malformed"),
    };
    Problem::new(status, kind, title, format!("{what}: {text}"))
}

/// A JSON body.
pub(crate) struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Problem> {
        axum::Json::<T>::from_request(req, state)
            .await
            .map(|axum::Json(v)| JsonBody(v))
            .map_err(|e: JsonRejection| problem(e.status(), "the JSON body", e.body_text()))
    }
}

/// An optional JSON body: absent when the request has none (no length, or
/// length 0, and not chunked), refused like [`JsonBody`] when it has a bad one.
impl<S: Send + Sync, T: DeserializeOwned> axum::extract::OptionalFromRequest<S> for JsonBody<T> {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Option<Self>, Problem> {
        let h = req.headers();
        let has_body = h.contains_key(axum::http::header::TRANSFER_ENCODING)
            || h.get(axum::http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.trim() != "0");
        if !has_body {
            return Ok(None);
        }
        <JsonBody<T> as FromRequest<S>>::from_request(req, state)
            .await
            .map(Some)
    }
}

/// Query parameters.
pub(crate) struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryParams<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(v)| QueryParams(v))
            .map_err(|e: QueryRejection| problem(e.status(), "the query", e.body_text()))
    }
}

/// Path parameters.
pub(crate) struct PathParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for PathParams<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(v)| PathParams(v))
            .map_err(|e: PathRejection| problem(e.status(), "the path", e.body_text()))
    }
}

/// A raw body (bounded by the route's body limit).
pub(crate) struct RawBody(pub axum::body::Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Problem> {
        axum::body::Bytes::from_request(req, state)
            .await
            .map(RawBody)
            .map_err(|e: BytesRejection| problem(e.status(), "the body", e.body_text()))
    }
}

/// A UTF-8 text body (bounded by the route's body limit).
pub(crate) struct TextBody(pub String);

impl<S: Send + Sync> FromRequest<S> for TextBody {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Problem> {
        String::from_request(req, state)
            .await
            .map(TextBody)
            .map_err(|e: StringRejection| problem(e.status(), "the body", e.body_text()))
    }
}

//! The event history: queries with filters, paged by event id.

use ahv_core::{Event, EventId, EventKind, EventQuery, Field};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

use crate::extract::QueryParams;
use crate::problem::Problem;
use crate::{Auth, State, agent_id, session_id};

/// Most events one query returns.
const MAX_EVENTS: usize = 1000;

/// Which events to return; every condition must hold.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct EventsQuery {
    /// Only this session's.
    session: Option<String>,
    /// Only this agent's.
    agent: Option<String>,
    /// Only this kind (`ring.breach_detected`, `operator.request`, …).
    kind: Option<String>,
    /// Only events after this id (for paging: the last id seen).
    after: Option<u64>,
    /// At most this many, the oldest that match (default and maximum 1000).
    limit: Option<usize>,
}

/// One event.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EventView {
    /// Its id (bus order).
    pub id: u64,
    /// Its kind.
    pub kind: String,
    /// When, in µs on the hypervisor's clock.
    pub time_us: u64,
    /// Its session.
    pub session: Option<String>,
    /// Its agent.
    pub agent: Option<String>,
    /// Its causal trace (32 hex digits).
    pub trace: String,
    /// The event that caused it.
    pub parent: Option<u64>,
    /// Its payload's fields.
    #[schema(value_type = Object)]
    pub fields: Map<String, Value>,
}

pub(crate) fn view(e: &Event) -> EventView {
    let mut fields = Map::new();
    e.payload.for_each_field(|name, value| {
        let v = match value {
            Field::Text(t) => Value::from(t),
            Field::Uint(n) => Value::from(n),
            Field::Real(x) => Value::from(x),
            Field::Ring(r) => Value::from(r.number()),
            Field::Duration(d) => Value::from(u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
            Field::Hash(h) => h.map_or(Value::Null, |h| Value::from(hex::encode(h))),
            Field::Agents(a) => Value::from(a.iter().map(ToString::to_string).collect::<Vec<_>>()),
        };
        let key = if matches!(value, Field::Duration(_)) {
            format!("{name}_us")
        } else {
            name.to_string()
        };
        fields.insert(key, v);
    });
    EventView {
        id: e.id.0,
        kind: e.kind().name().to_string(),
        time_us: u64::try_from(e.time.as_micros()).unwrap_or(u64::MAX),
        session: e.session.as_ref().map(ToString::to_string),
        agent: e.agent.as_ref().map(ToString::to_string),
        trace: e.trace.to_string(),
        parent: e.parent.map(|p| p.0),
        fields,
    }
}

/// Events from the bounded history, oldest first.
#[utoipa::path(get, path = "/v1/events", tag = "events",
    params(EventsQuery),
    responses((status = 200, body = Vec<EventView>), (status = 400, body = Problem)))]
pub(crate) async fn query(
    axum::extract::State(s): State,
    Auth(_c): Auth,
    QueryParams(q): QueryParams<EventsQuery>,
) -> Result<Json<Vec<EventView>>, Problem> {
    let mut eq = EventQuery::default().limit(q.limit.unwrap_or(MAX_EVENTS).min(MAX_EVENTS));
    if let Some(x) = &q.session {
        eq = eq.session(session_id(x)?);
    }
    if let Some(x) = &q.agent {
        eq = eq.agent(agent_id(x)?);
    }
    if let Some(x) = &q.kind {
        eq = eq.kind(EventKind::from_name(x).ok_or_else(|| {
            Problem::bad_request(format!(
                "kind {x:?} is not an event kind (e.g. session.created)"
            ))
        })?);
    }
    if let Some(x) = q.after {
        eq = eq.after(EventId(x));
    }
    Ok(Json(s.hv.events().query(&eq).iter().map(view).collect()))
}

/// How many events of each kind the bounded history holds.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EventStats {
    /// Events in the history (at most its capacity).
    pub total: usize,
    /// The newest event's id.
    pub last_id: Option<u64>,
    /// Count per kind, for the kinds present.
    pub by_kind: std::collections::BTreeMap<String, usize>,
}

/// Counts of the events in the history, by kind.
#[utoipa::path(get, path = "/v1/events/stats", tag = "events",
    responses((status = 200, body = EventStats)))]
pub(crate) async fn stats(axum::extract::State(s): State, Auth(_c): Auth) -> Json<EventStats> {
    let all = s.hv.events().query(&EventQuery::default());
    let mut by_kind = std::collections::BTreeMap::new();
    for e in &all {
        *by_kind.entry(e.kind().name().to_string()).or_insert(0) += 1;
    }
    Json(EventStats {
        total: all.len(),
        last_id: all.last().map(|e| e.id.0),
        by_kind,
    })
}

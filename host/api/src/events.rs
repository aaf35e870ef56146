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

/// How many events a live stream may fall behind before it skips (and says
/// how many it skipped in a `lagged` event).
pub(crate) const STREAM_BUFFER: usize = 4096;

/// Which events to stream; every condition must hold.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct StreamQuery {
    /// Only this session's.
    session: Option<String>,
    /// Only this agent's.
    agent: Option<String>,
    /// Only this kind.
    kind: Option<String>,
    /// First replay the stored events after this id (a reconnecting client
    /// may send `Last-Event-ID` instead).
    after: Option<u64>,
}

/// A live stream of events (Server-Sent Events): each is `id: <event id>`,
/// `event: <kind>`, `data: <the event as JSON>`; ids may arrive out of
/// order when events are emitted concurrently. Stored events after
/// `after` (or `Last-Event-ID`) come first, so a client that reconnects
/// misses nothing the history still holds. A client that falls more than
/// 4096 events behind gets `event: lagged` with how many it missed.
#[utoipa::path(get, path = "/v1/events/stream", tag = "events",
    params(StreamQuery),
    responses((status = 200, description = "text/event-stream of events", content_type = "text/event-stream", body = String),
        (status = 400, body = Problem)))]
pub(crate) async fn stream(
    axum::extract::State(s): State,
    Auth(_c): Auth,
    headers: axum::http::HeaderMap,
    QueryParams(q): QueryParams<StreamQuery>,
) -> Result<
    axum::response::Sse<
        impl futures_util::Stream<Item = Result<axum::response::sse::Event, std::convert::Infallible>>,
    >,
    Problem,
> {
    use axum::response::sse::{Event as Sse, KeepAlive};
    use tokio::sync::broadcast::error::RecvError;

    let mut filter = EventQuery::default();
    if let Some(x) = &q.session {
        filter = filter.session(session_id(x)?);
    }
    if let Some(x) = &q.agent {
        filter = filter.agent(agent_id(x)?);
    }
    if let Some(x) = &q.kind {
        filter = filter.kind(EventKind::from_name(x).ok_or_else(|| {
            Problem::bad_request(format!(
                "kind {x:?} is not an event kind (e.g. session.created)"
            ))
        })?);
    }
    let after = q.after.or_else(|| {
        headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok())
    });
    // Subscribe before reading the history, so nothing falls between them.
    let live = s.live.subscribe();
    let replay: Vec<std::sync::Arc<Event>> = match after {
        Some(a) => {
            s.hv.events()
                .query(&filter.clone().after(EventId(a)).limit(MAX_EVENTS))
                .into_iter()
                .map(std::sync::Arc::new)
                .collect()
        }
        None => Vec::new(),
    };
    // Live events up to here were replayed (or are before `after`): every
    // event with a smaller id was in the history when it was read, since ids
    // are assigned and stored under one lock. Live events can arrive out of
    // id order (an audit sink emits while the bus delivers), so this bound
    // stays fixed rather than following the newest id sent.
    let seen = replay.last().map(|e| e.id.0).or(after);
    let sse = |e: &Event| {
        let data = serde_json::to_string(&view(e)).unwrap_or_else(|_| "{}".into());
        Sse::default()
            .id(e.id.0.to_string())
            .event(e.kind().name())
            .data(data)
    };
    struct St {
        replay: std::vec::IntoIter<std::sync::Arc<Event>>,
        live: tokio::sync::broadcast::Receiver<std::sync::Arc<Event>>,
        seen: Option<u64>,
        filter: EventQuery,
    }
    let st = St {
        replay: replay.into_iter(),
        live,
        seen,
        filter,
    };
    let stream = futures_util::stream::unfold(st, move |mut st| async move {
        if let Some(e) = st.replay.next() {
            let out = sse(&e);
            return Some((Ok(out), st));
        }
        loop {
            match st.live.recv().await {
                Ok(e) => {
                    if st.seen.is_some_and(|s| e.id.0 <= s) || !st.filter.matches(&e) {
                        continue;
                    }
                    let out = sse(&e);
                    return Some((Ok(out), st));
                }
                Err(RecvError::Lagged(n)) => {
                    let out = Sse::default()
                        .event("lagged")
                        .data(format!("{{\"missed\":{n}}}"));
                    return Some((Ok(out), st));
                }
                Err(RecvError::Closed) => return None,
            }
        }
    });
    Ok(axum::response::Sse::new(stream).keep_alive(KeepAlive::default()))
}

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

/// The query for the given filters, each validated.
fn filter(
    session: Option<&str>,
    agent: Option<&str>,
    kind: Option<&str>,
) -> Result<EventQuery, Problem> {
    let mut q = EventQuery::default();
    if let Some(x) = session {
        q = q.session(session_id(x)?);
    }
    if let Some(x) = agent {
        q = q.agent(agent_id(x)?);
    }
    if let Some(x) = kind {
        q = q.kind(EventKind::from_name(x).ok_or_else(|| {
            Problem::bad_request(format!(
                "kind {x:?} is not an event kind (e.g. session.created)"
            ))
        })?);
    }
    Ok(q)
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
    let mut eq = filter(q.session.as_deref(), q.agent.as_deref(), q.kind.as_deref())?
        .limit(q.limit.unwrap_or(MAX_EVENTS).min(MAX_EVENTS));
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
    let (counts, last) = s.hv.events().kind_counts();
    Json(EventStats {
        total: counts.values().sum(),
        last_id: last.map(|id| id.0),
        by_kind: counts
            .into_iter()
            .map(|(k, n)| (k.to_string(), n))
            .collect(),
    })
}

/// How many events a live stream may fall behind before it skips (and says
/// how many it skipped in a `lagged` event).
pub(crate) const STREAM_BUFFER: usize = 4096;

/// Most live event streams one caller may have open at once: each holds a
/// page of up to [`MAX_EVENTS`] events while its client reads it, and a
/// client that stops reading keeps it.
pub(crate) const MAX_STREAMS_PER_CALLER: usize = 16;

/// One of a caller's open streams, given back when the stream ends.
struct StreamSlot {
    streams: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
    caller: String,
}

impl StreamSlot {
    /// A slot for `caller`, unless it has [`MAX_STREAMS_PER_CALLER`] open.
    fn take(shared: &crate::Shared, caller: &str) -> Result<StreamSlot, Problem> {
        let mut open = shared.streams.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(caller.to_owned()).or_insert(0);
        if *n >= MAX_STREAMS_PER_CALLER {
            return Err(Problem::new(
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                "too-many-streams",
                "Too many live streams",
                format!(
                    "caller {caller} has {MAX_STREAMS_PER_CALLER} live event streams open; close one first"
                ),
            ));
        }
        *n += 1;
        Ok(StreamSlot {
            streams: shared.streams.clone(),
            caller: caller.to_owned(),
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.caller) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.caller);
            }
        }
    }
}

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
/// `after` (or `Last-Event-ID`) come first, every one the history holds, so
/// a client that reconnects misses nothing the history still has; when it
/// no longer has some, the stream says so first (`event: lagged`, with the
/// oldest id kept), and an id newer than any stored (a client of an earlier
/// run of the server) gets `event: reset`. A client that falls more than
/// 4096 events behind gets `event: lagged` with how many it missed. Streams
/// end when the server shuts down.
#[utoipa::path(get, path = "/v1/events/stream", tag = "events",
    params(StreamQuery),
    responses((status = 200, description = "text/event-stream of events", content_type = "text/event-stream", body = String),
        (status = 400, body = Problem)))]
pub(crate) async fn stream(
    axum::extract::State(s): State,
    Auth(caller): Auth,
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

    let filter = filter(q.session.as_deref(), q.agent.as_deref(), q.kind.as_deref())?;
    let slot = StreamSlot::take(&s, &caller.name)?;
    let after = q.after.or_else(|| {
        headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok())
    });
    // Subscribe before reading the history, so nothing falls between them.
    let live = s.live.subscribe();
    let stop = s.stop.subscribe();
    let bus = s.hv.events();
    // Every event up to `newest` is in the history (ids are assigned and
    // stored under one lock), so the replay covers up to it and the live
    // stream takes over after it. Live events can arrive out of id order
    // (an audit sink emits while the bus delivers), so this bound stays
    // fixed rather than following the newest id sent.
    let newest = bus.last().map_or(0, |e| e.id.0);
    let oldest = bus
        .query(&EventQuery::default().limit(1))
        .first()
        .map_or(newest + 1, |e| e.id.0);
    let mut notices = Vec::new();
    let cursor = match after {
        Some(a) if a > newest => {
            notices.push(
                Sse::default()
                    .event("reset")
                    .data(format!("{{\"after\":{a},\"newest\":{newest}}}")),
            );
            None
        }
        Some(a) => {
            if a.saturating_add(1) < oldest {
                notices.push(
                    Sse::default()
                        .event("lagged")
                        .data(format!("{{\"oldest_kept\":{oldest}}}")),
                );
            }
            Some(a)
        }
        None => None,
    };
    let sse = |e: &Event| {
        let data = serde_json::to_string(&view(e)).unwrap_or_else(|_| "{}".into());
        Sse::default()
            .id(e.id.0.to_string())
            .event(e.kind().name())
            .data(data)
    };
    struct St {
        shared: std::sync::Arc<crate::Shared>,
        notices: std::vec::IntoIter<Sse>,
        /// The replay's position (the last id read from the history), while
        /// it runs.
        cursor: Option<u64>,
        page: std::collections::VecDeque<Event>,
        newest: u64,
        live: tokio::sync::broadcast::Receiver<std::sync::Arc<Event>>,
        stop: tokio::sync::watch::Receiver<bool>,
        filter: EventQuery,
        /// Given back when the stream is dropped.
        _slot: StreamSlot,
    }
    let st = St {
        shared: s.clone(),
        notices: notices.into_iter(),
        cursor,
        page: std::collections::VecDeque::new(),
        newest,
        live,
        stop,
        filter,
        _slot: slot,
    };
    let stream = futures_util::stream::unfold(st, move |mut st| async move {
        if *st.stop.borrow() {
            return None;
        }
        if let Some(n) = st.notices.next() {
            return Some((Ok(n), st));
        }
        // The replay, a page at a time, up to `newest`.
        while let Some(c) = st.cursor {
            if let Some(e) = st.page.pop_front() {
                return Some((Ok(sse(&e)), st));
            }
            if c >= st.newest {
                st.cursor = None;
                break;
            }
            let page = st
                .shared
                .hv
                .events()
                .query(&st.filter.clone().after(EventId(c)).limit(MAX_EVENTS));
            let page: Vec<Event> = page.into_iter().filter(|e| e.id.0 <= st.newest).collect();
            match page.last() {
                Some(last) => st.cursor = Some(last.id.0),
                None => st.cursor = None,
            }
            st.page.extend(page);
        }
        loop {
            tokio::select! {
                r = st.live.recv() => match r {
                    Ok(e) => {
                        if e.id.0 <= st.newest || !st.filter.matches(&e) {
                            continue;
                        }
                        return Some((Ok(sse(&e)), st));
                    }
                    Err(RecvError::Lagged(n)) => {
                        let out = Sse::default()
                            .event("lagged")
                            .data(format!("{{\"missed\":{n}}}"));
                        return Some((Ok(out), st));
                    }
                    Err(RecvError::Closed) => return None,
                },
                _ = st.stop.changed() => return None,
            }
        }
    });
    Ok(axum::response::Sse::new(stream).keep_alive(KeepAlive::default()))
}

//! `GET /metrics`: the runtime's counters and histograms (host calls by
//! capability and ring, breaches, refusals by kind, traps by cause,
//! instantiation and call latency) and, read at scrape time, sessions by
//! state, participants by ring, the audit log's counters, backlog and lag.

use std::sync::atomic::AtomicU64;

use ahv_core::Ring;
use ahv_governance::session::SessionState;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::problem::Problem;
use crate::{Auth, State};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RingLabel {
    ring: u8,
}

const STATES: [SessionState; 5] = [
    SessionState::Created,
    SessionState::Handshaking,
    SessionState::Active,
    SessionState::Terminating,
    SessionState::Archived,
];

fn state_name(s: SessionState) -> &'static str {
    match s {
        SessionState::Created => "created",
        SessionState::Handshaking => "handshaking",
        SessionState::Active => "active",
        SessionState::Terminating => "terminating",
        SessionState::Archived => "archived",
    }
}

/// Prometheus metrics in the OpenMetrics text format.
#[utoipa::path(get, path = "/metrics", tag = "server",
    responses((status = 200, description = "OpenMetrics text", content_type = "application/openmetrics-text", body = String)))]
pub(crate) async fn scrape(
    axum::extract::State(s): State,
    Auth(_c): Auth,
) -> Result<Response, Problem> {
    let mut now = Registry::with_prefix("ahv");
    let sessions = Family::<StateLabel, Gauge>::default();
    let agents = Family::<RingLabel, Gauge>::default();
    for st in STATES {
        let _ = sessions.get_or_create(&StateLabel {
            state: state_name(st),
        });
    }
    for r in Ring::ALL {
        let _ = agents.get_or_create(&RingLabel { ring: r.number() });
    }
    for info in s.hv.sessions() {
        sessions
            .get_or_create(&StateLabel {
                state: state_name(info.state),
            })
            .inc();
        if info.state == SessionState::Archived {
            continue;
        }
        for p in &info.participants {
            let ring = s.hv.ring(&info.id, &p.agent).unwrap_or(p.ring);
            agents
                .get_or_create(&RingLabel {
                    ring: ring.number(),
                })
                .inc();
        }
    }
    now.register(
        "sessions",
        "Sessions by state (live, and the recently archived)",
        sessions,
    );
    now.register(
        "agents",
        "Participants of live sessions by their ring now",
        agents,
    );
    let events: Counter<u64, AtomicU64> = Counter::default();
    events.inc_by(s.hv.events().evicted() + s.hv.events().len() as u64);
    now.register("events", "Events emitted since the server started", events);
    if let Some(a) = s.hv.audit() {
        let st = a.stats();
        let counter = |v: u64| {
            let c: Counter<u64, AtomicU64> = Counter::default();
            c.inc_by(v);
            c
        };
        now.register(
            "audit_deltas",
            "Audit deltas captured",
            counter(st.captured),
        );
        now.register(
            "audit_late_events",
            "Events after their session's commitment, not captured",
            counter(st.late),
        );
        now.register(
            "audit_write_failures",
            "Failed background audit writes (each retried)",
            counter(st.write_failures),
        );
        let backlog: Gauge<i64, std::sync::atomic::AtomicI64> = Gauge::default();
        backlog.set(i64::try_from(st.staged_bytes).unwrap_or(i64::MAX));
        now.register(
            "audit_backlog_bytes",
            "Audit bytes captured but not yet written",
            backlog,
        );
        let lag: Gauge<f64, std::sync::atomic::AtomicU64> = Gauge::default();
        if st.staged_bytes > 0 && st.last_round_unix_ms > 0 {
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            lag.set(now_ms.saturating_sub(st.last_round_unix_ms) as f64 / 1000.0);
        }
        now.register(
            "audit_flush_lag_seconds",
            "With a backlog, the time since the last complete write round (0 without one)",
            lag,
        );
    }
    let mut text = String::new();
    prometheus_client::encoding::text::encode_registry(
        &mut text,
        s.hv.runtime().metrics().registry(),
    )
    .and_then(|()| prometheus_client::encoding::text::encode_registry(&mut text, &now))
    .and_then(|()| prometheus_client::encoding::text::encode_eof(&mut text))
    .map_err(|e| Problem::internal(format!("encoding the metrics: {e}")))?;
    let mut res = text.into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    Ok(res)
}

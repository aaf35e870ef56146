//! Rate limits at the gate: `ahv-security`'s token buckets behind the
//! runtime's [`RateSource`] and [`RateBudget`] traits.

use std::sync::Arc;
use std::time::Duration;

use ahv_core::{AgentId, Clock, Metering, Ring, SessionId};
use ahv_security::rate::{CallClass, ParticipantBuckets, RateDenied, RateLimiter};

use crate::gate::RateBudget;
use crate::runtime::RateSource;

/// One participant's buckets and the limiter's clock.
struct Budget {
    buckets: Arc<ParticipantBuckets>,
    clock: Arc<dyn Clock>,
}

impl RateBudget for Budget {
    #[inline]
    fn try_acquire(&self, metering: Metering, ring: Ring) -> Result<(), Option<Duration>> {
        let class = match metering {
            Metering::Free => return Ok(()),
            Metering::Read => CallClass::Read,
            Metering::Change => CallClass::Change,
        };
        self.buckets
            .try_acquire(class, ring, self.clock.now())
            .map_err(|d| match d {
                RateDenied::RetryAfter(after) => Some(after),
                RateDenied::Never => None,
            })
    }
}

impl RateSource for RateLimiter {
    fn budget(
        &self,
        agent: &AgentId,
        session: &SessionId,
        ring: Ring,
    ) -> Result<Arc<dyn RateBudget>, String> {
        let buckets = self
            .buckets(agent, session, ring)
            .map_err(|e| e.to_string())?;
        Ok(Arc::new(Budget {
            buckets,
            clock: self.clock().clone(),
        }))
    }
}

//! The step and saga state machines (SEMANTICS.md, "Sagas"). The engine makes
//! every state change through [`StepState::transition`] or
//! [`SagaState::transition`], so an illegal change is an error, never a
//! silent jump.
//!
//! What the engine means by each saga edge:
//! - `running → completed`: every step (and every fan-out group) committed.
//! - `running → failed`: a step failed and nothing was committed, so there is
//!   nothing to compensate.
//! - `running → compensating`: a step or group failed (or a crash under
//!   `on_crash: compensate`, or an operator) with something committed.
//! - `compensating → failed`: every compensation succeeded; the saga failed and
//!   left nothing behind.
//! - `compensating → escalated`: a compensation failed; the liability engine is
//!   told through [`crate::SagaObserver::escalated`].
//! - `compensating → completed` is legal in the table (the reference ended a
//!   cleanly compensated saga there) but this engine never takes it: a saga
//!   whose work was undone did not complete.

use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The state of one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    /// Not started, or waiting for a retry.
    Pending,
    /// An attempt is running.
    Executing,
    /// An attempt succeeded.
    Committed,
    /// Its compensation is running.
    Compensating,
    /// Its compensation succeeded.
    Compensated,
    /// Its compensation failed.
    CompensationFailed,
    /// An attempt failed (it may still be retried).
    Failed,
}

/// The state of a whole saga.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SagaState {
    /// Steps are being run.
    Running,
    /// Committed steps are being compensated.
    Compensating,
    /// Every step committed.
    Completed,
    /// The saga failed and left nothing behind.
    Failed,
    /// A compensation failed: escalated to liability.
    Escalated,
}

/// An illegal state change, naming both ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum TransitionError {
    /// A step state change outside the table.
    #[error("illegal step transition {from} -> {to}")]
    Step {
        /// The state the step was in.
        from: StepState,
        /// The state asked for.
        to: StepState,
    },
    /// A saga state change outside the table.
    #[error("illegal saga transition {from} -> {to}")]
    Saga {
        /// The state the saga was in.
        from: SagaState,
        /// The state asked for.
        to: SagaState,
    },
}

impl StepState {
    /// Every step state, for tables and tests.
    pub const ALL: [StepState; 7] = [
        StepState::Pending,
        StepState::Executing,
        StepState::Committed,
        StepState::Compensating,
        StepState::Compensated,
        StepState::CompensationFailed,
        StepState::Failed,
    ];

    /// Whether the table allows `self → to`. `failed → pending` is the retry
    /// edge: the engine takes it only when a retry is granted (or to re-run a
    /// step a crash interrupted).
    pub fn can_transition(self, to: StepState) -> bool {
        use StepState::*;
        matches!(
            (self, to),
            (Pending, Executing)
                | (Executing, Committed)
                | (Executing, Failed)
                | (Failed, Pending)
                | (Committed, Compensating)
                | (Compensating, Compensated)
                | (Compensating, CompensationFailed)
        )
    }

    /// The state after `self → to`.
    ///
    /// # Errors
    /// [`TransitionError::Step`] naming both states when the table forbids it.
    pub fn transition(self, to: StepState) -> Result<StepState, TransitionError> {
        if self.can_transition(to) {
            Ok(to)
        } else {
            Err(TransitionError::Step { from: self, to })
        }
    }

    /// The state's name as written in records and files.
    pub fn as_str(self) -> &'static str {
        match self {
            StepState::Pending => "pending",
            StepState::Executing => "executing",
            StepState::Committed => "committed",
            StepState::Compensating => "compensating",
            StepState::Compensated => "compensated",
            StepState::CompensationFailed => "compensation_failed",
            StepState::Failed => "failed",
        }
    }
}

impl SagaState {
    /// Every saga state, for tables and tests.
    pub const ALL: [SagaState; 5] = [
        SagaState::Running,
        SagaState::Compensating,
        SagaState::Completed,
        SagaState::Failed,
        SagaState::Escalated,
    ];

    /// Whether the table allows `self → to`.
    pub fn can_transition(self, to: SagaState) -> bool {
        use SagaState::*;
        matches!(
            (self, to),
            (Running, Compensating)
                | (Running, Completed)
                | (Running, Failed)
                | (Compensating, Completed)
                | (Compensating, Failed)
                | (Compensating, Escalated)
        )
    }

    /// The state after `self → to`.
    ///
    /// # Errors
    /// [`TransitionError::Saga`] naming both states when the table forbids it.
    pub fn transition(self, to: SagaState) -> Result<SagaState, TransitionError> {
        if self.can_transition(to) {
            Ok(to)
        } else {
            Err(TransitionError::Saga { from: self, to })
        }
    }

    /// Whether no transition leaves this state.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            SagaState::Completed | SagaState::Failed | SagaState::Escalated
        )
    }

    /// The state's name as written in records and files.
    pub fn as_str(self) -> &'static str {
        match self {
            SagaState::Running => "running",
            SagaState::Compensating => "compensating",
            SagaState::Completed => "completed",
            SagaState::Failed => "failed",
            SagaState::Escalated => "escalated",
        }
    }
}

impl fmt::Display for StepState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for SagaState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_table_is_exactly_the_semantics() {
        use StepState::*;
        let allowed = [
            (Pending, Executing),
            (Executing, Committed),
            (Executing, Failed),
            (Failed, Pending),
            (Committed, Compensating),
            (Compensating, Compensated),
            (Compensating, CompensationFailed),
        ];
        let mut legal = 0;
        for from in StepState::ALL {
            for to in StepState::ALL {
                let want = allowed.contains(&(from, to));
                let got = from.transition(to);
                if want {
                    legal += 1;
                    assert_eq!(got, Ok(to), "{from} -> {to}");
                } else {
                    assert_eq!(
                        got,
                        Err(TransitionError::Step { from, to }),
                        "{from} -> {to}"
                    );
                }
            }
        }
        assert_eq!(legal, allowed.len());
    }

    #[test]
    fn saga_table_is_exactly_the_semantics() {
        use SagaState::*;
        let allowed = [
            (Running, Compensating),
            (Running, Completed),
            (Running, Failed),
            (Compensating, Completed),
            (Compensating, Failed),
            (Compensating, Escalated),
        ];
        for from in SagaState::ALL {
            for to in SagaState::ALL {
                let want = allowed.contains(&(from, to));
                let got = from.transition(to);
                if want {
                    assert_eq!(got, Ok(to), "{from} -> {to}");
                } else {
                    assert_eq!(
                        got,
                        Err(TransitionError::Saga { from, to }),
                        "{from} -> {to}"
                    );
                }
            }
        }
    }

    #[test]
    fn final_states_have_no_way_out() {
        for from in SagaState::ALL.into_iter().filter(|s| s.is_final()) {
            assert!(SagaState::ALL.iter().all(|&to| !from.can_transition(to)));
        }
        assert!(!SagaState::Running.is_final());
        assert!(!SagaState::Compensating.is_final());
    }

    #[test]
    fn errors_name_both_states() {
        let e = StepState::Committed
            .transition(StepState::Pending)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "illegal step transition committed -> pending"
        );
        let e = SagaState::Completed
            .transition(SagaState::Running)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "illegal saga transition completed -> running"
        );
    }

    #[test]
    fn names_match_serde() {
        for s in StepState::ALL {
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
        }
        for s in SagaState::ALL {
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
        }
    }
}

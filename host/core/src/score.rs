//! Trust scores (σ) and the rings and risk they imply (`docs/governance.md`, "Rings").

use thiserror::Error;

use crate::ring::Ring;

/// A score outside [0, 1] or not a number.
#[derive(Debug, Clone, PartialEq, Error)]
#[error("{field} must be a number in [0, 1], got {value}")]
pub struct ScoreError {
    /// The field that held the score.
    pub field: &'static str,
    /// The value given.
    pub value: f64,
}

/// Checks that `value` (named `field` in errors) is a score in [0, 1].
///
/// # Errors
/// [`ScoreError`] for NaN, infinities and values outside [0, 1].
#[inline]
pub fn check_score(field: &'static str, value: f64) -> Result<f64, ScoreError> {
    // Both comparisons are false for NaN; the infinities are out of range.
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(ScoreError { field, value })
    }
}

/// The ring an effective score earns: `> 0.95` with consensus → ring 1,
/// else `> 0.60` → ring 2, else ring 3 (strict `>`). Ring 0 is never computed
/// from a score.
///
/// # Errors
/// [`ScoreError`] if `eff` is not a score.
#[inline]
pub fn ring_for_score(eff: f64, consensus: bool) -> Result<Ring, ScoreError> {
    let eff = check_score("eff", eff)?;
    Ok(if eff > 0.95 && consensus {
        Ring::Privileged
    } else if eff > 0.60 {
        Ring::Standard
    } else {
        Ring::Sandbox
    })
}

/// How far an action can be undone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reversibility {
    /// Fully undoable.
    Full,
    /// Partly undoable.
    Partial,
    /// Not undoable.
    None,
}

impl Reversibility {
    /// The default risk weight: full 0.2, partial 0.65, none 0.95.
    pub fn risk_weight(self) -> f64 {
        match self {
            Reversibility::Full => 0.2,
            Reversibility::Partial => 0.65,
            Reversibility::None => 0.95,
        }
    }
}

/// What an agent declares about an action it may take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionDescriptor {
    /// The action's id.
    pub id: String,
    /// How far it can be undone.
    pub reversibility: Reversibility,
    /// It only reads.
    pub read_only: bool,
    /// It administers the hypervisor.
    pub admin: bool,
}

impl ActionDescriptor {
    /// The ring the action needs: admin → 0; non-reversible and not read-only
    /// → 1; read-only → 3; reversible (full or partial) → 2.
    pub fn required_ring(&self) -> Ring {
        if self.admin {
            Ring::Root
        } else if self.reversibility == Reversibility::None && !self.read_only {
            Ring::Privileged
        } else if self.read_only {
            Ring::Sandbox
        } else {
            Ring::Standard
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_thresholds_are_strict() {
        assert_eq!(ring_for_score(0.60, false), Ok(Ring::Sandbox));
        assert_eq!(ring_for_score(0.600_000_1, false), Ok(Ring::Standard));
        assert_eq!(ring_for_score(0.95, true), Ok(Ring::Standard));
        assert_eq!(ring_for_score(0.96, true), Ok(Ring::Privileged));
        assert_eq!(
            ring_for_score(0.99, false),
            Ok(Ring::Standard),
            "ring 1 needs consensus"
        );
        assert_eq!(
            ring_for_score(1.0, true),
            Ok(Ring::Privileged),
            "never ring 0 from a score"
        );
        assert_eq!(ring_for_score(0.0, false), Ok(Ring::Sandbox));
    }

    #[test]
    fn bad_scores_are_refused_naming_the_field() {
        for bad in [f64::NAN, -0.01, 1.01, f64::INFINITY] {
            let e = ring_for_score(bad, false).unwrap_err();
            assert_eq!(e.field, "eff");
        }
        assert_eq!(check_score("sigma", 0.5), Ok(0.5));
        assert!(
            check_score("sigma", -1.0)
                .unwrap_err()
                .to_string()
                .starts_with("sigma must be")
        );
    }

    #[test]
    fn required_rings_follow_the_table() {
        let d = |reversibility, read_only, admin| ActionDescriptor {
            id: "a".into(),
            reversibility,
            read_only,
            admin,
        };
        assert_eq!(
            d(Reversibility::Full, false, true).required_ring(),
            Ring::Root
        );
        assert_eq!(
            d(Reversibility::None, false, false).required_ring(),
            Ring::Privileged
        );
        assert_eq!(
            d(Reversibility::None, true, false).required_ring(),
            Ring::Sandbox
        );
        assert_eq!(
            d(Reversibility::Full, false, false).required_ring(),
            Ring::Standard
        );
        assert_eq!(
            d(Reversibility::Partial, false, false).required_ring(),
            Ring::Standard
        );
        assert_eq!(Reversibility::Partial.risk_weight(), 0.65);
    }
}

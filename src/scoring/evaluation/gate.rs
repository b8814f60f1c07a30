//! The promotion gate a training run's `auto_promote` can require: the evaluation it asks for,
//! the decision (a pure function of the two versions' macro-F1, the margin and the version
//! served now) and its application in the `evaluate` job's transaction.
use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use uuid::Uuid;

use super::{store, NewEvaluation};
use crate::scoring::ScoringError;
use crate::worker_state::WorkerState;

/// The metric a promotion gate compares (macro-F1 at each version's stored thresholds: the
/// decisions it would serve).
pub const GATE_METRIC: &str = "macro_f1";

/// A gate: promote `candidate` when its macro-F1 on the evaluation's records beats `against`'s
/// (the version served when the evaluation was asked for) by at least `margin`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromotionGate {
    pub candidate: i32,
    pub against: i32,
    pub margin: f64,
    pub metric: String,
    /// `promoted` | `not_promoted`, once decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What a training run's gate asks for (stored on the run as `promotion_gate`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateSettings {
    pub dataset_id: Uuid,
    pub split: String,
    pub margin: f64,
}

/// The macro-F1 of the gate's candidate and of the version it is compared with, from the
/// evaluated versions' figures: `None` when either could not be computed on these records; an
/// error when either version was not evaluated at all.
pub(super) fn figures(
    gate: &PromotionGate,
    macro_f1: &HashMap<i32, Option<f64>>,
) -> Result<Option<(f64, f64)>, ScoringError> {
    let (Some(&candidate), Some(&against)) =
        (macro_f1.get(&gate.candidate), macro_f1.get(&gate.against))
    else {
        return Err(ScoringError::Invalid(
            "the gate's versions were not both evaluated".into(),
        ));
    };
    Ok(candidate.zip(against))
}

/// The gate's decision: `gate` with its decision and reason filled in, and whether to promote
/// the candidate. It is promoted when it beats the version it was compared with by at least the
/// margin (and by more than nothing), and that version is still the one `served`. Without
/// figures (`None`) nothing is promoted, and `served` is not looked at.
pub(super) fn decide(
    mut gate: PromotionGate,
    figures: Option<(f64, f64)>,
    served: Option<i32>,
) -> (PromotionGate, bool) {
    let Some((candidate, against)) = figures else {
        gate.decision = Some("not_promoted".into());
        gate.reason = Some(format!(
            "macro-F1 could not be computed on these records (no positive of any label of v{} or v{}): nothing was changed",
            gate.candidate, gate.against
        ));
        return (gate, false);
    };
    let delta = candidate - against;
    let figures = format!(
        "macro-F1 {candidate:.4} (v{}) vs {against:.4} (v{}): {delta:+.4}, margin {}",
        gate.candidate, gate.against, gate.margin
    );
    let promote = served == Some(gate.against) && delta > 0.0 && delta >= gate.margin;
    if served != Some(gate.against) {
        gate.decision = Some("not_promoted".into());
        gate.reason = Some(format!(
            "{figures}; the served version is now {} (the gate compared with v{}), so nothing was changed",
            served.map_or("none".to_string(), |v| format!("v{v}")),
            gate.against
        ));
    } else if promote {
        gate.decision = Some("promoted".into());
        gate.reason = Some(format!("{figures}: promoted"));
    } else {
        gate.decision = Some("not_promoted".into());
        gate.reason = Some(format!(
            "{figures}: below the margin, v{} keeps serving",
            gate.against
        ));
    }
    (gate, promote)
}

/// Applies a gate inside the evaluation's transaction: with both figures, locks the model's row,
/// decides against the version served now, and promotes the candidate when the decision says
/// so.
pub(super) async fn apply(
    conn: &mut PgConnection,
    model: &str,
    gate: PromotionGate,
    macro_f1: &HashMap<i32, Option<f64>>,
) -> Result<PromotionGate, ScoringError> {
    let figures = figures(&gate, macro_f1)?;
    if figures.is_none() {
        return Ok(decide(gate, None, None).0);
    }
    let served = store::served_version_for_update(conn, model).await?;
    let (gate, promote) = decide(gate, figures, served);
    if promote {
        crate::registry::promote_in_tx(conn, model, gate.candidate, "auto_promote")
            .await
            .map_err(|e| ScoringError::Transient(format!("promoting: {e}")))?;
    }
    tracing::info!(model, decision = ?gate.decision, reason = ?gate.reason, "promotion gate decided");
    Ok(gate)
}

/// A training run's gated `auto_promote`: when a version other than the new one is served,
/// asks for an evaluation of both on the gate's dataset split (once per run); the `evaluate`
/// job then decides. Returns the evaluation's id, or `None` when nothing else is served.
pub async fn ensure_gate_evaluation(
    state: &WorkerState,
    run_id: Uuid,
    model_name: &str,
    version: i32,
    gate: &GateSettings,
) -> Result<Option<Uuid>, ScoringError> {
    let pool = &state.pool;
    let served = crate::registry::served_version(pool, model_name)
        .await?
        .flatten();
    let Some(against) = served.filter(|&v| v != version) else {
        return Ok(None);
    };
    let mut versions = Vec::new();
    for v in [against, version] {
        let meta = crate::registry::version_meta(pool, model_name, v)
            .await?
            .ok_or_else(|| {
                ScoringError::Invalid(format!("version {v} of `{model_name}` vanished"))
            })?;
        versions.push((v, meta));
    }
    let id = store::create(
        pool,
        &NewEvaluation {
            model_name,
            versions: &versions,
            dataset_id: gate.dataset_id,
            split: &gate.split,
            run_id: Some(run_id),
            promotion: Some(PromotionGate {
                candidate: version,
                against,
                margin: gate.margin,
                metric: GATE_METRIC.into(),
                decision: None,
                reason: None,
            }),
        },
        state.settings.queue.max_attempts,
    )
    .await?;
    tracing::info!(run = %run_id, model = model_name, version, against, evaluation = %id, "auto_promote waits for its evaluation");
    Ok(Some(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// v3 is a candidate against the served v2, with a margin of 0.05.
    fn gate() -> PromotionGate {
        PromotionGate {
            candidate: 3,
            against: 2,
            margin: 0.05,
            metric: GATE_METRIC.into(),
            decision: None,
            reason: None,
        }
    }

    fn macro_f1(pairs: &[(i32, Option<f64>)]) -> HashMap<i32, Option<f64>> {
        pairs.iter().copied().collect()
    }

    #[test]
    fn a_candidate_that_beats_the_served_version_by_the_margin_is_promoted() {
        // 0.80 - 0.70 = +0.10 >= 0.05.
        let (decided, promote) = decide(gate(), Some((0.8, 0.7)), Some(2));
        assert!(promote);
        assert_eq!(decided.decision.as_deref(), Some("promoted"));
        assert_eq!(
            decided.reason.as_deref(),
            Some("macro-F1 0.8000 (v3) vs 0.7000 (v2): +0.1000, margin 0.05: promoted")
        );
        assert_eq!((decided.candidate, decided.against), (3, 2));
    }

    #[test]
    fn below_the_margin_or_no_better_the_served_version_keeps_serving() {
        // 0.73 - 0.70 = +0.03 < 0.05.
        let (decided, promote) = decide(gate(), Some((0.73, 0.7)), Some(2));
        assert!(!promote);
        assert_eq!(decided.decision.as_deref(), Some("not_promoted"));
        assert_eq!(
            decided.reason.as_deref(),
            Some("macro-F1 0.7300 (v3) vs 0.7000 (v2): +0.0300, margin 0.05: below the margin, v2 keeps serving")
        );
        // A margin of 0 still asks for better, not equal: 0.70 - 0.70 = 0.
        let mut no_margin = gate();
        no_margin.margin = 0.0;
        let (decided, promote) = decide(no_margin.clone(), Some((0.7, 0.7)), Some(2));
        assert!(!promote);
        assert_eq!(decided.decision.as_deref(), Some("not_promoted"));
        // A worse candidate: 0.60 - 0.70 = -0.10.
        let (decided, promote) = decide(no_margin, Some((0.6, 0.7)), Some(2));
        assert!(!promote);
        assert!(decided
            .reason
            .unwrap()
            .contains(": -0.1000, margin 0: below the margin"));
    }

    #[test]
    fn when_another_version_is_served_now_nothing_changes() {
        for (served, now) in [(Some(4), "v4"), (None, "none")] {
            let (decided, promote) = decide(gate(), Some((0.9, 0.7)), served);
            assert!(!promote);
            assert_eq!(decided.decision.as_deref(), Some("not_promoted"));
            assert_eq!(
                decided.reason,
                Some(format!(
                    "macro-F1 0.9000 (v3) vs 0.7000 (v2): +0.2000, margin 0.05; the served version is now {now} (the gate compared with v2), so nothing was changed"
                ))
            );
        }
    }

    #[test]
    fn without_figures_nothing_is_promoted() {
        let evaluated = macro_f1(&[(2, Some(0.7)), (3, None)]);
        assert_eq!(figures(&gate(), &evaluated).unwrap(), None);
        let (decided, promote) = decide(gate(), None, Some(2));
        assert!(!promote);
        assert_eq!(decided.decision.as_deref(), Some("not_promoted"));
        assert_eq!(
            decided.reason.as_deref(),
            Some("macro-F1 could not be computed on these records (no positive of any label of v3 or v2): nothing was changed")
        );
    }

    #[test]
    fn the_figures_are_the_candidates_and_the_served_versions() {
        let evaluated = macro_f1(&[(2, Some(0.7)), (3, Some(0.8))]);
        assert_eq!(figures(&gate(), &evaluated).unwrap(), Some((0.8, 0.7)));
        // A gate whose versions were not both evaluated is a bug: never retried.
        let e = figures(&gate(), &macro_f1(&[(3, Some(0.8))])).unwrap_err();
        assert!(matches!(e, ScoringError::Invalid(_)));
        assert_eq!(
            crate::queue::job::Failure::outcome(&e),
            crate::queue::job::Outcome::Fail
        );
    }

    #[test]
    fn a_decided_gate_round_trips_through_its_stored_json() {
        let (decided, _) = decide(gate(), Some((0.8, 0.7)), Some(2));
        let stored = serde_json::to_value(&decided).unwrap();
        assert_eq!(stored["decision"], "promoted");
        assert_eq!(
            serde_json::from_value::<PromotionGate>(stored).unwrap(),
            decided
        );
        // Undecided, the gate is stored without decision and reason.
        let stored = serde_json::to_value(gate()).unwrap();
        assert!(stored.get("decision").is_none() && stored.get("reason").is_none());
    }
}

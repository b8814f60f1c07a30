//! `uncovered`: labels of the model that nobody ever annotated on the source (the labels a
//! dataset masks there, such as sentiment on the demo's emails), and the source's documents to
//! start them with. One item per (label, document): documents with a stored score of this
//! version for their current text first, by |score − threshold| ascending (the model's
//! boundary, where an answer teaches most), then unscored documents in (source, external id)
//! order; ties keep label order, then document order.
use std::collections::HashSet;

use sqlx::PgPool;

use super::{
    current_scores, f3, scoring_hint, source_documents, Counts, Ranked, Ranking, Reason,
    ReviewError, ReviewVersion,
};
use crate::config::Settings;

/// A document with its current score (None: unscored), in document order.
#[derive(Debug, Clone)]
pub struct UncoveredDoc {
    pub document_id: i64,
    pub scores: Option<Vec<f32>>,
}

/// Ranks (label, document) pairs for the uncovered labels.
pub fn rank_uncovered(
    version: &ReviewVersion,
    uncovered: &[String],
    docs: &[UncoveredDoc],
) -> Vec<Ranked> {
    let mut keyed: Vec<(bool, f32, usize, usize, Ranked)> = Vec::new();
    for (li, label) in uncovered.iter().enumerate() {
        let Some(index) = version.labels.iter().position(|l| l == label) else {
            continue;
        };
        let threshold = version.thresholds.get(index).copied().unwrap_or(0.5);
        for (order, doc) in docs.iter().enumerate() {
            let score = doc.scores.as_ref().and_then(|s| s.get(index)).copied();
            let distance = score.map(|s| (s - threshold).abs());
            let explanation = match (score, distance) {
                (Some(s), Some(d)) => format!(
                    "nobody annotated `{label}` on this source; the model scores {} against threshold {} (distance {}), an extrapolation from other sources",
                    f3(s as f64),
                    f3(threshold as f64),
                    f3(d as f64)
                ),
                _ => format!(
                    "nobody annotated `{label}` on this source; no stored score of this version for this text"
                ),
            };
            keyed.push((
                score.is_none(),
                distance.unwrap_or(f32::INFINITY),
                li,
                order,
                Ranked {
                    document_id: doc.document_id,
                    reason: Reason::Uncovered {
                        label: label.clone(),
                        score,
                        threshold,
                        distance,
                    },
                    explanation,
                },
            ));
        }
    }
    keyed.sort_by(|a, b| {
        a.0.cmp(&b.0)
            .then(a.1.total_cmp(&b.1))
            .then(a.2.cmp(&b.2))
            .then(a.3.cmp(&b.3))
    });
    keyed.into_iter().map(|k| k.4).collect()
}

pub(super) async fn rank(
    pool: &PgPool,
    settings: &Settings,
    version: &ReviewVersion,
    source: &str,
    labels: &[String],
) -> Result<Ranking, ReviewError> {
    let covered: HashSet<String> = sqlx::query_scalar(
        "SELECT DISTINCT a.label FROM annotations a JOIN documents d ON d.id = a.document_id
         WHERE d.source = $1 AND a.label = ANY($2)",
    )
    .bind(source)
    .bind(&version.labels)
    .fetch_all(pool)
    .await?
    .into_iter()
    .collect();
    let uncovered_all: Vec<String> = version
        .labels
        .iter()
        .filter(|l| !covered.contains(*l))
        .cloned()
        .collect();
    let uncovered: Vec<String> = uncovered_all
        .iter()
        .filter(|l| labels.contains(l))
        .cloned()
        .collect();
    let (docs, empty) = source_documents(pool, settings, Some(source)).await?;
    let ids: Vec<i64> = docs.iter().map(|d| d.id).collect();
    let stored = super::stored_scores(pool, version, &ids).await?;
    let (current, unscored, stale) = current_scores(&docs, &stored);
    let docs: Vec<UncoveredDoc> = current
        .into_iter()
        .map(|(d, s)| UncoveredDoc {
            document_id: d.id,
            scores: s.map(<[f32]>::to_vec),
        })
        .collect();
    let items = rank_uncovered(version, &uncovered, &docs);
    Ok(Ranking {
        items,
        counts: Counts {
            documents: Some(docs.len() as i64),
            empty_text: Some(empty),
            unscored: Some(unscored),
            stale_scores: Some(stale),
            ..Counts::default()
        },
        labels: uncovered,
        uncovered_labels: Some(uncovered_all),
        hint: (unscored > 0).then(|| scoring_hint(version, Some(source), unscored)),
        ..Ranking::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datasets::TaskType;

    #[test]
    fn scored_documents_nearest_the_threshold_first_then_unscored_in_order() {
        let v = ReviewVersion {
            model: "m".into(),
            version: 1,
            task: TaskType::MultiLabel,
            labels: vec!["spam".into(), "pos".into()],
            thresholds: vec![0.5, 0.4],
            embedding_model: "e".into(),
        };
        let docs = [
            UncoveredDoc {
                document_id: 10,
                scores: None,
            },
            UncoveredDoc {
                document_id: 11,
                scores: Some(vec![0.0, 0.9]),
            },
            UncoveredDoc {
                document_id: 12,
                scores: Some(vec![0.0, 0.35]),
            },
        ];
        let ranked = rank_uncovered(&v, &["pos".to_string()], &docs);
        let ids: Vec<i64> = ranked.iter().map(|r| r.document_id).collect();
        assert_eq!(ids, vec![12, 11, 10]);
    }
}

//! `uncovered`: labels of the model that nobody ever annotated on the source (the labels a
//! dataset masks there, such as sentiment on the demo's emails), and the source's documents to
//! start them with. One item per (label, document): documents with a stored score of this
//! version for their current text first, by |score − threshold| ascending (the model's
//! boundary, where an answer teaches most), then unscored documents in (source, external id)
//! order; ties keep label order, then document order.
use std::collections::HashSet;

use sqlx::PgConnection;

use super::store::{sort_keyed, Keyed, Stager};
use super::{
    f3, scoring_hint, stream_documents_into, Counts, DocColumns, Ranked, Ranking, Reason,
    ReviewError, ReviewVersion,
};
use crate::config::Settings;

/// A document with its current score (None: unscored), in document order.
#[derive(Debug, Clone)]
pub struct UncoveredDoc {
    pub document_id: i64,
    pub scores: Option<Vec<f32>>,
}

/// One document's items, one per uncovered label, with their sort keys: (unscored, distance,
/// label index, `order`), `order` being the document's place in document order.
pub fn keyed_uncovered(
    version: &ReviewVersion,
    uncovered: &[String],
    doc: &UncoveredDoc,
    order: i64,
) -> Vec<Keyed> {
    let mut out = Vec::new();
    for (li, label) in uncovered.iter().enumerate() {
        let Some(index) = version.labels.iter().position(|l| l == label) else {
            continue;
        };
        let threshold = version.thresholds.get(index).copied().unwrap_or(0.5);
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
        out.push(Keyed {
            key: (
                i16::from(score.is_none()),
                distance.map_or(f64::INFINITY, f64::from),
                li as i64,
                order,
            ),
            item: Ranked {
                document_id: doc.document_id,
                reason: Reason::Uncovered {
                    label: label.clone(),
                    score,
                    threshold,
                    distance,
                },
                explanation,
            },
        });
    }
    out
}

/// Ranks (label, document) pairs for the uncovered labels.
pub fn rank_uncovered(
    version: &ReviewVersion,
    uncovered: &[String],
    docs: &[UncoveredDoc],
) -> Vec<Ranked> {
    sort_keyed(
        docs.iter()
            .enumerate()
            .flat_map(|(order, doc)| keyed_uncovered(version, uncovered, doc, order as i64))
            .collect(),
    )
}

/// The labels of `labels` somebody annotated on the source: one probe per label (the
/// first annotation found ends it).
async fn covered_labels(
    reader: &mut PgConnection,
    source: &str,
    labels: &[String],
) -> Result<HashSet<String>, sqlx::Error> {
    let mut covered = HashSet::new();
    for label in labels {
        let found: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM annotations a JOIN documents d ON d.id = a.document_id
                            WHERE d.source = $1 AND a.label = $2)",
        )
        .bind(source)
        .bind(label)
        .fetch_one(&mut *reader)
        .await?;
        if found {
            covered.insert(label.clone());
        }
    }
    Ok(covered)
}

/// Finds the uncovered labels, then streams the source's documents with their scores and
/// stages one item per (uncovered label, document).
pub(super) async fn compute(
    reader: &mut PgConnection,
    stager: Option<&mut Stager<'_>>,
    settings: &Settings,
    version: &ReviewVersion,
    source: &str,
    labels: &[String],
) -> Result<Ranking, ReviewError> {
    let covered = covered_labels(reader, source, &version.labels).await?;
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
    let (mut documents, mut empty, mut unscored, mut stale) = (0i64, 0i64, 0i64, 0i64);
    let columns = DocColumns {
        scores: true,
        votes: false,
    };
    stream_documents_into(
        reader,
        stager,
        settings,
        version,
        Some(source),
        columns,
        |doc| {
            if doc.checksum.is_none() {
                empty += 1;
                return Vec::new();
            }
            documents += 1;
            let scores = doc.current_score().map(<[f32]>::to_vec);
            if scores.is_none() {
                unscored += 1;
                stale += i64::from(!doc.scores.is_empty());
            }
            let doc = UncoveredDoc {
                document_id: doc.id,
                scores,
            };
            keyed_uncovered(version, &uncovered, &doc, documents)
        },
    )
    .await?;
    Ok(Ranking {
        counts: Counts {
            documents: Some(documents),
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

//! `uncertain`: documents whose stored score (this version, current text) is nearest the
//! decision. Binary and multi-label: the smallest |score − threshold| over the considered
//! labels (the reason names that label); multi-class: the smallest margin between the two most
//! probable classes. Documents nobody annotated on that label (multi-class: on any class) come
//! first, then annotated ones; ties keep (source, external id) order.
use std::collections::BTreeSet;

use sqlx::PgConnection;

use super::store::{sort_keyed, Keyed, Stager};
use super::{
    f3, scoring_hint, stream_documents_into, Counts, DocColumns, Ranked, Ranking, Reason,
    ReviewError, ReviewVersion,
};
use crate::config::Settings;
use crate::datasets::TaskType;

/// A document with its current score and the labels someone annotated on it.
#[derive(Debug, Clone)]
pub struct ScoredDoc {
    pub document_id: i64,
    pub scores: Vec<f32>,
    pub annotated: BTreeSet<String>,
}

/// One scored document's item and sort key: (annotated, distance or margin, `order`, 0),
/// where `order` is the document's place in (source, external id) order. None: nothing of it
/// is considered.
pub fn keyed_uncertain(
    version: &ReviewVersion,
    considered: &[String],
    doc: &ScoredDoc,
    order: i64,
) -> Option<Keyed> {
    let (annotated, distance, item) = match version.task {
        TaskType::MultiClass => small_margin(version, considered, doc),
        TaskType::Binary | TaskType::MultiLabel => near_threshold(version, considered, doc),
    }?;
    Some(Keyed {
        key: (i16::from(annotated), distance as f64, order, 0),
        item,
    })
}

/// Ranks scored documents (given in document order).
pub fn rank_uncertain(
    version: &ReviewVersion,
    considered: &[String],
    docs: &[ScoredDoc],
) -> Vec<Ranked> {
    sort_keyed(
        docs.iter()
            .enumerate()
            .filter_map(|(order, doc)| keyed_uncertain(version, considered, doc, order as i64))
            .collect(),
    )
}

fn near_threshold(
    version: &ReviewVersion,
    considered: &[String],
    doc: &ScoredDoc,
) -> Option<(bool, f32, Ranked)> {
    let mut best: Option<(usize, f32)> = None;
    for (i, label) in version.labels.iter().enumerate() {
        if !considered.contains(label) {
            continue;
        }
        let (Some(score), Some(threshold)) = (doc.scores.get(i), version.thresholds.get(i)) else {
            continue;
        };
        let distance = (score - threshold).abs();
        if best.is_none_or(|(_, d)| distance < d) {
            best = Some((i, distance));
        }
    }
    let (i, distance) = best?;
    let label = version.labels[i].clone();
    let (score, threshold) = (doc.scores[i], version.thresholds[i]);
    let annotated = doc.annotated.contains(&label);
    let explanation = format!(
        "`{label}` scores {} against its threshold {} (distance {}); {}",
        f3(score as f64),
        f3(threshold as f64),
        f3(distance as f64),
        if annotated {
            "already annotated on this label"
        } else {
            "nobody annotated this label on it yet"
        }
    );
    Some((
        annotated,
        distance,
        Ranked {
            document_id: doc.document_id,
            reason: Reason::NearThreshold {
                label,
                score,
                threshold,
                distance,
                annotated,
            },
            explanation,
        },
    ))
}

fn small_margin(
    version: &ReviewVersion,
    considered: &[String],
    doc: &ScoredDoc,
) -> Option<(bool, f32, Ranked)> {
    let n = version.labels.len().min(doc.scores.len());
    if n < 2 {
        return None;
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|a, b| doc.scores[*b].total_cmp(&doc.scores[*a]).then(a.cmp(b)));
    let (top, second) = (order[0], order[1]);
    let (top_class, second_class) = (&version.labels[top], &version.labels[second]);
    // With one label asked for: only documents torn between it and another class.
    if considered.len() < version.labels.len()
        && !considered.contains(top_class)
        && !considered.contains(second_class)
    {
        return None;
    }
    let margin = doc.scores[top] - doc.scores[second];
    let annotated = version.labels.iter().any(|l| doc.annotated.contains(l));
    let explanation = format!(
        "torn between `{top_class}` ({}) and `{second_class}` ({}), margin {}; {}",
        f3(doc.scores[top] as f64),
        f3(doc.scores[second] as f64),
        f3(margin as f64),
        if annotated {
            "already annotated"
        } else {
            "nobody annotated it yet"
        }
    );
    Some((
        annotated,
        margin,
        Ranked {
            document_id: doc.document_id,
            reason: Reason::SmallMargin {
                top_class: top_class.clone(),
                top_score: doc.scores[top],
                second_class: second_class.clone(),
                second_score: doc.scores[second],
                margin,
                annotated,
            },
            explanation,
        },
    ))
}

/// Streams the source's documents with their scores and votes, and stages each scored one.
pub(super) async fn compute(
    reader: &mut PgConnection,
    stager: Option<&mut Stager<'_>>,
    settings: &Settings,
    version: &ReviewVersion,
    source: Option<&str>,
    labels: &[String],
) -> Result<Ranking, ReviewError> {
    let (mut documents, mut empty, mut unscored, mut stale) = (0i64, 0i64, 0i64, 0i64);
    let columns = DocColumns {
        scores: true,
        votes: true,
    };
    stream_documents_into(reader, stager, settings, version, source, columns, |doc| {
        if doc.checksum.is_none() {
            empty += 1;
            return Vec::new();
        }
        documents += 1;
        let Some(scores) = doc.current_score() else {
            unscored += 1;
            stale += i64::from(!doc.scores.is_empty());
            return Vec::new();
        };
        let scored = ScoredDoc {
            document_id: doc.id,
            scores: scores.to_vec(),
            annotated: doc.votes.iter().map(|v| v.label.clone()).collect(),
        };
        keyed_uncertain(version, labels, &scored, documents)
            .into_iter()
            .collect()
    })
    .await?;
    Ok(Ranking {
        counts: Counts {
            documents: Some(documents),
            empty_text: Some(empty),
            unscored: Some(unscored),
            stale_scores: Some(stale),
            ..Counts::default()
        },
        labels: labels.to_vec(),
        hint: (unscored > 0).then(|| scoring_hint(version, source, unscored)),
        ..Ranking::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(task: TaskType, labels: &[&str], thresholds: &[f32]) -> ReviewVersion {
        ReviewVersion {
            model: "m".into(),
            version: 1,
            task,
            labels: labels.iter().map(|s| s.to_string()).collect(),
            thresholds: thresholds.to_vec(),
            embedding_model: "e".into(),
        }
    }

    fn doc(id: i64, scores: &[f32], annotated: &[&str]) -> ScoredDoc {
        ScoredDoc {
            document_id: id,
            scores: scores.to_vec(),
            annotated: annotated.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn nearest_label_wins_and_unannotated_come_first() {
        let v = version(TaskType::MultiLabel, &["spam", "pos"], &[0.5, 0.3]);
        let docs = [
            doc(1, &[0.52, 0.9], &[]),       // spam, 0.02
            doc(2, &[0.9, 0.31], &["pos"]),  // pos, 0.01, annotated
            doc(3, &[0.1, 0.25], &["spam"]), // pos, 0.05, spam annotated only
            doc(4, &[0.6, 0.0], &[]),        // spam, 0.1
        ];
        let all = v.labels.clone();
        let ranked = rank_uncertain(&v, &all, &docs);
        let ids: Vec<i64> = ranked.iter().map(|r| r.document_id).collect();
        assert_eq!(ids, vec![1, 3, 4, 2]);
        match &ranked[1].reason {
            Reason::NearThreshold {
                label, annotated, ..
            } => {
                assert_eq!(label, "pos");
                assert!(!annotated);
            }
            other => panic!("{other:?}"),
        }
        // One label only.
        let ranked = rank_uncertain(&v, &["spam".to_string()], &docs);
        let ids: Vec<i64> = ranked.iter().map(|r| r.document_id).collect();
        assert_eq!(ids, vec![1, 4, 2, 3]);
    }

    #[test]
    fn multi_class_ranks_by_top_two_margin() {
        let v = version(TaskType::MultiClass, &["a", "b", "c"], &[0.5, 0.5, 0.5]);
        let docs = [
            doc(1, &[0.7, 0.2, 0.1], &[]),
            doc(2, &[0.4, 0.1, 0.5], &[]),
            doc(3, &[0.34, 0.33, 0.33], &["a"]),
        ];
        let all = v.labels.clone();
        let ranked = rank_uncertain(&v, &all, &docs);
        let ids: Vec<i64> = ranked.iter().map(|r| r.document_id).collect();
        assert_eq!(ids, vec![2, 1, 3]);
        let only_b = rank_uncertain(&v, &["b".to_string()], &docs);
        let ids: Vec<i64> = only_b.iter().map(|r| r.document_id).collect();
        assert_eq!(ids, vec![1, 3]);
    }
}

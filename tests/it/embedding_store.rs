//! The embeddings table writer: COPY fast path, fallback on a concurrent duplicate, overwrite.

use crate::support::*;
use trainyard::embedding::bytes_to_vector;
use trainyard::embedding::store::insert_embeddings;

async fn stored(pool: &sqlx::PgPool, checksum: &str) -> Vec<f32> {
    let bytes: Vec<u8> =
        sqlx::query_scalar("SELECT vector FROM embeddings WHERE model = 'm' AND checksum = $1")
            .bind(checksum)
            .fetch_one(pool)
            .await
            .unwrap();
    bytes_to_vector(&bytes)
}

#[tokio::test]
async fn copy_then_fallback_then_overwrite() {
    let db = fresh_db().await;
    let (one, two, three) = (
        vec![1.0f32, 2.0, 3.0],
        vec![4.0f32, 5.0, 6.0],
        vec![7.0f32, 8.0, 9.0],
    );
    let mut tx = db.pool.begin().await.unwrap();
    let n = insert_embeddings(&mut tx, "m", 3, &[("a", &one), ("b", &two)], false)
        .await
        .unwrap();
    assert_eq!(n, 2);
    // "b" exists: the COPY fails on the unique key, the batch falls back and keeps b's vector.
    let n = insert_embeddings(&mut tx, "m", 3, &[("b", &three), ("c", &three)], false)
        .await
        .unwrap();
    assert_eq!(n, 1);
    tx.commit().await.unwrap();
    assert_eq!(stored(&db.pool, "a").await, one);
    assert_eq!(stored(&db.pool, "b").await, two, "the first vector stays");
    assert_eq!(stored(&db.pool, "c").await, three);
    let mut tx = db.pool.begin().await.unwrap();
    let n = insert_embeddings(&mut tx, "m", 3, &[("a", &three)], true)
        .await
        .unwrap();
    assert_eq!(n, 1);
    tx.commit().await.unwrap();
    assert_eq!(
        stored(&db.pool, "a").await,
        three,
        "force_regenerate replaces"
    );
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM embeddings")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(count, 3);
    // A wrong byte length is refused by the table's CHECK, not stored.
    let mut tx = db.pool.begin().await.unwrap();
    assert!(insert_embeddings(&mut tx, "m", 4, &[("d", &one)], false)
        .await
        .is_err());
    db.drop_db().await;
}

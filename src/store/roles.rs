//! Roles, grants and the catalog, as the permission snapshot reads them.

use deadpool_postgres::Pool;

use super::{conn, Result};
use crate::permissions::Snapshot;

/// The version of roles and grants.
pub async fn catalog_version(pool: &Pool) -> Result<i64> {
    let db = conn(pool).await?;
    let stmt = db
        .prepare_cached("select version from catalog_version")
        .await?;
    Ok(db.query_one(&stmt, &[]).await?.get(0))
}

/// Every role with its grants, and the catalog, read in one snapshot.
pub async fn snapshot(pool: &Pool) -> Result<Snapshot> {
    let mut db = conn(pool).await?;
    let tx = db
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let version: i64 = tx
        .query_one("select version from catalog_version", &[])
        .await?
        .get(0);
    let grants = tx
        .query(
            "select r.name, rp.permission from roles r
             left join role_permissions rp on rp.role_id = r.id",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let catalog = tx
        .query("select name from permissions order by name", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    tx.commit().await?;
    Ok(Snapshot::from_rows(version, grants, catalog))
}

//! Old's other replication consumers, its vacuum horizon and the WAL the subscription keeps.

use super::{list, Database};
use crate::control::readiness::vacuum::{self, Slot};
use crate::cutover::CheckRow;

/// A transaction open this long on old is reported as holding back vacuum.
const LONG_TRANSACTION_MINUTES: i32 = 10;

pub(super) async fn rows(db: &Database<'_>) -> Vec<CheckRow> {
    let loaded = tokio::try_join!(vacuum::slots(db.old), vacuum::publications(db.old));
    let (slots, publications) = match loaded {
        Ok(x) => x,
        Err(e) => return vec![db.unknown("other slots and publications", "warn", &e)],
    };
    let own_slot = db.subscription.slot.as_deref().unwrap_or_default();
    // Table-copy slots of this subscription are named pg_<subscription oid>_sync_<relid>_<sysid>.
    let own_sync = format!("pg_{}_sync_", db.subscription.oid);
    let others: Vec<&Slot> = slots.iter().filter(|s| s.name != own_slot && !s.name.starts_with(&own_sync)).collect();
    let other_publications: Vec<&String> = publications.iter().filter(|p| !db.subscription.publications.contains(p)).collect();
    let mut rows = Vec::new();
    if others.is_empty() && other_publications.is_empty() {
        rows.push(db.row("other slots and publications", "ok", "only the subscription's slot and publications"));
    } else {
        let mut parts = Vec::new();
        if !others.is_empty() {
            let described: Vec<String> = others
                .iter()
                .map(|s| format!("{} ({}, {}, keeps {} of WAL)", s.name, s.kind, if s.active { "active" } else { "inactive" }, bytes(s.retained_bytes.unwrap_or(0))))
                .collect();
            parts.push(format!(
                "slots whose consumers (CDC, standbys) do not follow the cutover: {}; recreate them on new at the switch, drop the unused ones (they keep WAL and hold back vacuum)",
                list(&described, 10)
            ));
        }
        if !other_publications.is_empty() {
            parts.push(format!("publications the subscription does not use (their subscribers stay on old): {}", list(&other_publications, 10)));
        }
        rows.push(db.row("other slots and publications", "warn", parts.join("; ")));
    }

    let limit = db.check.xid_age_warn;
    rows.push(match vacuum::xid_age(db.old).await {
        Ok(age) if age > limit => db.row(
            "transaction ID age",
            "warn",
            format!("age(datfrozenxid) = {age} on old, above {limit} (check.xid_age_warn): a VACUUM FREEZE is due; long copies and idle slots keep it from advancing"),
        ),
        Ok(age) => db.row("transaction ID age", "ok", format!("age(datfrozenxid) = {age} on old")),
        Err(e) => db.unknown("transaction ID age", "warn", &e),
    });

    // The subscription's own slots are the apply rows' business.
    let idle_slots: Vec<String> = others.iter().filter(|s| !s.active && s.xmin_age.is_some()).map(|s| format!("slot {} (inactive, xmin age {})", s.name, s.xmin_age.unwrap_or(0))).collect();
    rows.push(match vacuum::long_transactions(db.old, LONG_TRANSACTION_MINUTES).await {
        Ok(long) if idle_slots.is_empty() && long.is_empty() => db.row("vacuum held back", "ok", "no idle slot or long transaction holds back vacuum on old"),
        Ok(long) => {
            let holders: Vec<String> = idle_slots.into_iter().chain(long.into_iter().map(|(who, age)| format!("{who}, xmin age {age}"))).collect();
            db.row(
                "vacuum held back",
                "warn",
                format!(
                    "vacuum on old cannot remove rows newer than these hold (tables bloat, the xid age grows): {}; a long initial copy is one: add big tables one at a time",
                    list(&holders, 10)
                ),
            )
        }
        Err(e) => db.unknown("vacuum held back", "warn", &e),
    });

    rows.push(match slots.iter().find(|s| s.name == own_slot) {
        None => db.row("WAL retained", "fail", format!("the subscription's slot {own_slot:?} is not on old")),
        Some(s) if s.wal_status.as_deref() == Some("lost") => db.row(
            "WAL retained",
            "fail",
            format!("slot {own_slot} is invalidated (wal_status lost, max_slot_wal_keep_size): WAL new needs is gone; recreate the subscription"),
        ),
        Some(s) => {
            let kept = s.retained_bytes.unwrap_or(0);
            let safe = s.safe_wal_size.map(|b| format!(", {} more before max_slot_wal_keep_size invalidates it", bytes(b))).unwrap_or_default();
            let detail = format!("slot {own_slot} keeps {} of WAL on old{safe}", bytes(kept));
            if s.wal_status.as_deref() == Some("unreserved") {
                db.row("WAL retained", "warn", format!("{detail}; wal_status unreserved: it will be invalidated at the next checkpoint unless it catches up"))
            } else if kept as u64 > db.check.wal_retained_warn {
                db.row("WAL retained", "warn", format!("{detail}, above check.wal_retained_warn ({}): the disk of old fills while new lags", bytes(db.check.wal_retained_warn as i64)))
            } else {
                db.row("WAL retained", "ok", detail)
            }
        }
    });
    rows
}

fn bytes(n: i64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value.abs() >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

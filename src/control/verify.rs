//! VERIFY's SQL: a digest of a key range of a table, the same on old and new.
//!
//! A row is compared as the text of `ROW(col, ...)` over the columns old publishes, in old's
//! column order. Two 64-bit hashes of that text are summed over the rows: an order-independent
//! digest, so the two servers need not sort the rows alike (collations may differ between
//! machines). The hash is Postgres' own `hashtextextended` when both servers compute the same
//! values for it (checked first: it is not promised to stay the same across versions or
//! platforms), else the two halves of its md5, which is several times slower. The text form depends on a few settings; [`COMPARE_SETTINGS`]
//! makes them the same on both sides. Floats print the same from Postgres 12 on
//! (shortest-exact output), so 15 and 18 agree.

use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

use super::ControlError;

/// Settings that fix the text form of values, run on every connection VERIFY compares on.
/// `lock_timeout`: a chunk read never queues long behind DDL (its ACCESS SHARE lock would
/// make later statements queue behind it).
pub const COMPARE_SETTINGS: &str = "SET extra_float_digits = 3; SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'postgres'; \
    SET TimeZone = 'UTC'; SET bytea_output = 'hex'; SET lc_monetary = 'C'; SET lock_timeout = '5s'";

/// How rows are hashed for a digest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowHash {
    /// `hashtextextended(text, seed)`: both servers agree on it.
    Builtin,
    /// The two halves of `md5(text)`.
    Md5,
}

/// `Builtin` when old and new give `hashtextextended` the same values.
pub async fn row_hash(old: &Client, new: &Client) -> Result<RowHash, ControlError> {
    const PROBE: &str = r#"SELECT array_agg(hashtextextended(s, seed) ORDER BY s COLLATE "C", seed)::text FROM unnest(ARRAY['', 'pgcutover',
        repeat('éx', 37), '(1,"a b",2.5,)']) AS s, generate_series(0, 1) AS seed"#;
    let (a, b) = tokio::try_join!(old.query_one(PROBE, &[]), new.query_one(PROBE, &[]))?;
    Ok(if a.get::<_, String>(0) == b.get::<_, String>(0) { RowHash::Builtin } else { RowHash::Md5 })
}

/// A primary-key column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyColumn {
    pub name: String,
    /// `format_type()` on old: keys travel as text and are cast back with it.
    pub type_name: String,
}

/// What VERIFY reads of one table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableSpec {
    /// `schema.table` as `format('%I.%I')` writes it: usable in SQL as is.
    pub name: String,
    /// Empty: no primary key (the table is compared as a whole).
    pub key: Vec<KeyColumn>,
    /// The columns old publishes, in old's order (unquoted).
    pub columns: Vec<String>,
    /// `reltuples` on old, for progress (-1: never analyzed).
    pub estimated_rows: i64,
    pub hash: RowHash,
}

/// A key, one text value per key column.
pub type Key = Vec<String>;

/// Keys in `(after, upto]`; `None` is open.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Range {
    pub after: Option<Key>,
    pub upto: Option<Key>,
}

/// Rows of a range: count, the two digest sums, and the bytes of their text.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Digest {
    pub rows: i64,
    pub sums: (String, String),
    pub bytes: i64,
}

impl Digest {
    pub fn same_rows(&self, other: &Digest) -> bool {
        self.rows == other.rows && self.sums == other.sums
    }
}

/// The key and column list of `table` on old; `columns`: those old publishes.
pub async fn describe(old: &Client, table: &str, columns: &[String], hash: RowHash) -> Result<TableSpec, ControlError> {
    let key = old
        .query(
            "SELECT a.attname::text, pg_catalog.format_type(a.atttypid, a.atttypmod) FROM pg_catalog.pg_index i \
             JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey) \
             WHERE i.indrelid = $1::text::regclass AND i.indisprimary ORDER BY array_position(i.indkey::int2[], a.attnum)",
            &[&table],
        )
        .await?;
    let ordered = old
        .query(
            "SELECT a.attname::text FROM pg_catalog.pg_attribute a WHERE a.attrelid = $1::text::regclass AND a.attname = ANY ($2) \
             AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            &[&table, &columns],
        )
        .await?;
    let estimated = old.query_one("SELECT reltuples::int8 FROM pg_catalog.pg_class WHERE oid = $1::text::regclass", &[&table]).await?;
    Ok(TableSpec {
        name: table.to_string(),
        key: key.iter().map(|r| KeyColumn { name: r.get(0), type_name: r.get(1) }).collect(),
        columns: ordered.iter().map(|r| r.get(0)).collect(),
        estimated_rows: estimated.get(0),
        hash,
    })
}

impl TableSpec {
    fn row_text(&self) -> String {
        let columns: Vec<String> = self.columns.iter().map(|c| format!("t.{}", super::quote_ident(c))).collect();
        format!("ROW({})::text", columns.join(", "))
    }

    fn key_columns(&self) -> Vec<String> {
        self.key.iter().map(|k| format!("t.{}", super::quote_ident(&k.name))).collect()
    }

    /// `(t.k1, t.k2)`.
    fn key_tuple(&self) -> String {
        format!("({})", self.key_columns().join(", "))
    }

    /// `($n::text::type, ...)` from parameter `first` on.
    fn key_params(&self, first: usize) -> String {
        let params: Vec<String> = self.key.iter().enumerate().map(|(i, k)| format!("${}::text::{}", first + i, k.type_name)).collect();
        format!("({})", params.join(", "))
    }

    /// The WHERE clause of `range` and its parameters.
    fn range_filter(&self, range: &Range) -> (String, Vec<String>) {
        let mut conditions = Vec::new();
        let mut params = Vec::new();
        if let Some(after) = &range.after {
            conditions.push(format!("{} > {}", self.key_tuple(), self.key_params(params.len() + 1)));
            params.extend(after.iter().cloned());
        }
        if let Some(upto) = &range.upto {
            conditions.push(format!("{} <= {}", self.key_tuple(), self.key_params(params.len() + 1)));
            params.extend(upto.iter().cloned());
        }
        let filter = if conditions.is_empty() { String::new() } else { format!(" WHERE {}", conditions.join(" AND ")) };
        (filter, params)
    }

    /// `"id"=42` or `("a","b")=(1,x)`, for reports.
    pub fn describe_key(&self, key: &[String]) -> String {
        if let ([column], [value]) = (self.key.as_slice(), key) {
            return format!("{}={value}", column.name);
        }
        let names: Vec<&str> = self.key.iter().map(|k| k.name.as_str()).collect();
        format!("({})=({})", names.join(", "), key.join(", "))
    }
}

fn as_params(values: &[String]) -> Vec<&(dyn ToSql + Sync)> {
    values.iter().map(|v| v as &(dyn ToSql + Sync)).collect()
}

fn digest_of(row: &tokio_postgres::Row) -> Digest {
    Digest { rows: row.get(0), sums: (row.get(1), row.get(2)), bytes: row.get(3) }
}

/// The last key of the next chunk of `limit` rows after `after`, on old; `None` when fewer
/// rows are left (the chunk then runs to the end of the table). An index-only walk of the key.
pub async fn chunk_end(old: &Client, spec: &TableSpec, after: Option<&Key>, limit: i64) -> Result<Option<Key>, ControlError> {
    let range = Range { after: after.cloned(), upto: None };
    let (filter, mut params) = spec.range_filter(&range);
    let keys: Vec<String> = spec.key_columns().iter().map(|k| format!("{k}::text")).collect();
    params.push((limit - 1).max(0).to_string());
    let sql = format!(
        "SELECT {} FROM {} AS t{filter} ORDER BY {} OFFSET ${}::text::int8 LIMIT 1",
        keys.join(", "),
        spec.name,
        spec.key_columns().join(", "),
        params.len()
    );
    let row = old.query_opt(&sql, &as_params(&params)).await?;
    Ok(row.map(|r| (0..spec.key.len()).map(|i| r.get::<_, String>(i)).collect()))
}

/// The digest of `range` (the whole table for a table without a key).
pub async fn digest(client: &Client, spec: &TableSpec, range: &Range) -> Result<Digest, ControlError> {
    let (filter, params) = spec.range_filter(range);
    let rows = format!("SELECT {} AS r FROM {} AS t{filter}", spec.row_text(), spec.name);
    let sql = match spec.hash {
        RowHash::Builtin => format!(
            "SELECT count(*)::int8, coalesce(sum(hashtextextended(r, 0)), 0)::text, coalesce(sum(hashtextextended(r, 1)), 0)::text, \
             coalesce(sum(octet_length(r)), 0)::int8 FROM ({rows}) AS x"
        ),
        RowHash::Md5 => format!(
            "SELECT count(*)::int8, coalesce(sum(('x' || substr(h, 1, 16))::bit(64)::int8), 0)::text, \
             coalesce(sum(('x' || substr(h, 17, 16))::bit(64)::int8), 0)::text, coalesce(sum(len), 0)::int8 \
             FROM (SELECT md5(r) AS h, octet_length(r) AS len FROM ({rows}) AS x) AS y"
        ),
    };
    Ok(digest_of(&client.query_one(&sql, &as_params(&params)).await?))
}

/// Every row of `range`: (key, md5 of the row's text). For a table without a key: (no key,
/// md5) for each distinct row text, repeated as often as the row occurs.
pub async fn row_hashes(client: &Client, spec: &TableSpec, range: &Range) -> Result<Vec<(Key, String)>, ControlError> {
    let (filter, params) = spec.range_filter(range);
    let keys: Vec<String> = spec.key_columns().iter().map(|k| format!("{k}::text")).collect();
    let select = if keys.is_empty() { String::new() } else { format!("{}, ", keys.join(", ")) };
    let order = if keys.is_empty() { String::new() } else { format!(" ORDER BY {}", spec.key_columns().join(", ")) };
    let sql = format!("SELECT {select}md5({}) FROM {} AS t{filter}{order}", spec.row_text(), spec.name);
    let rows = client.query(&sql, &as_params(&params)).await?;
    let n = spec.key.len();
    Ok(rows.iter().map(|r| ((0..n).map(|i| r.get::<_, String>(i)).collect(), r.get::<_, String>(n))).collect())
}

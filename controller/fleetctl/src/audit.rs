//! `fleetctl audit`.

use fleet_proto::values::parse_duration;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fleet_proto::v1::ListAuditRequest;
use serde_json::json;

use crate::client::Conn;
use crate::output::{self, Format};

pub async fn run(
    conn: &Conn,
    since: Option<String>,
    limit: Option<usize>,
    format: Format,
) -> anyhow::Result<()> {
    let since = match since {
        None => 0,
        Some(s) => {
            let d = parse_duration("--since", &s)?;
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or(Duration::ZERO);
            now.saturating_sub(d).as_secs() as i64
        }
    };
    // The controller pages its answer; follow the pages until done or `--limit` is met.
    let mut admin = conn.admin().await?;
    let mut entries = Vec::new();
    let mut page_token = String::new();
    loop {
        let want = limit.map(|l| l.saturating_sub(entries.len()));
        if want == Some(0) {
            break;
        }
        let page = admin
            .list_audit(ListAuditRequest {
                since,
                page_token,
                limit: want.map_or(0, |w| w.min(u32::MAX as usize) as u32),
            })
            .await
            .map_err(|s| conn.status(s))?
            .into_inner();
        entries.extend(page.entries);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    let time = |ms: i64| {
        humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64))
            .to_string()
    };
    match format {
        Format::Json => output::json(&json!(entries
            .iter()
            .map(|e| json!({
                "seq": e.seq,
                "time": time(e.time_ms),
                "actor": e.actor,
                "action": e.action,
                "target": e.target,
                "detail": e.detail,
            }))
            .collect::<Vec<_>>())),
        Format::Table => output::table(
            &["TIME", "ACTOR", "ACTION", "TARGET", "DETAIL"],
            &entries
                .iter()
                .map(|e| {
                    vec![
                        time(e.time_ms),
                        e.actor.clone(),
                        e.action.clone(),
                        e.target.clone(),
                        e.detail.clone(),
                    ]
                })
                .collect::<Vec<_>>(),
        ),
    }
    Ok(())
}

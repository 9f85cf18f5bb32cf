//! `fleetctl events [-f]`: the fleet's events as they happen, one line each (one JSON
//! object per line with `--output json`, for tools that read a stream).

use std::io::Write;

use clap::Args;
use fleet_proto::v1::EventsRequest;
use serde_json::json;

use crate::client::Conn;
use crate::output::{self, Format};

#[derive(Args)]
pub struct EventsArgs {
    /// Keep following: print new events as they happen (Ctrl-C to stop).
    #[arg(short, long)]
    follow: bool,
    /// Only this app's events.
    #[arg(long)]
    app: Option<String>,
    /// Only this host's events.
    #[arg(long)]
    host: Option<String>,
    /// How many recent events to show first (the controller keeps 1,000).
    #[arg(short = 'n', long, default_value_t = 50)]
    last: u32,
}

pub async fn run(conn: &Conn, args: EventsArgs, format: Format) -> anyhow::Result<()> {
    let mut stream = conn
        .admin()
        .await?
        .events(EventsRequest {
            follow: args.follow,
            app: args.app.unwrap_or_default(),
            host: args.host.unwrap_or_default(),
            last: args.last.max(1),
        })
        .await
        .map_err(|s| conn.status(s))?
        .into_inner();
    let mut out = std::io::stdout().lock();
    while let Some(e) = stream.message().await.map_err(|s| conn.status(s))? {
        let time = output::time_ms(e.time_ms);
        match format {
            Format::Json => writeln!(
                out,
                "{}",
                json!({
                    "seq": e.seq,
                    "time": time,
                    "kind": e.kind,
                    "host": (!e.host.is_empty()).then_some(&e.host),
                    "app": (!e.app.is_empty()).then_some(&e.app),
                    "message": e.message,
                })
            )?,
            Format::Table => {
                let dash = |s: &str| {
                    if s.is_empty() {
                        "-".to_owned()
                    } else {
                        s.to_owned()
                    }
                };
                writeln!(
                    out,
                    "{time}  {:<12} {:<16} {:<12} {}",
                    e.kind,
                    dash(&e.host),
                    dash(&e.app),
                    e.message
                )?
            }
        }
        // A follower is read as it goes (`| grep`, a test): every event is flushed.
        out.flush()?;
    }
    Ok(())
}

//! `fleetctl controllers [set|clear]`: the controller addresses every agent is told when
//! it connects and keeps in its agent.toml, so adding or retiring a replica reaches every
//! host without a re-enrollment (docs/ha.md).

use clap::Subcommand;
use fleet_proto::controllers::ControllerList;
use fleet_proto::v1::{ControllerAddresses, GetControllersRequest, SetControllersRequest};
use serde_json::json;

use crate::client::Conn;
use crate::output::{self, Format};

#[derive(Subcommand)]
pub enum ControllersCmd {
    /// Hand agents this list from their next connection on, e.g. `c1:7443,c2:7443`. An
    /// agent keeps the controller it reached as a fallback until it has reached one of
    /// these, so a wrong list cannot cut it off; fix it with another `set`.
    Set { addresses: ControllerList },
    /// Stop handing agents a list: they keep the addresses they have.
    Clear,
}

pub async fn run(conn: &Conn, cmd: Option<ControllersCmd>, format: Format) -> anyhow::Result<()> {
    let mut admin = conn.admin().await?;
    let reply = match cmd {
        None => admin.get_controllers(GetControllersRequest {}).await,
        Some(ControllersCmd::Set { addresses }) => {
            admin
                .set_controllers(SetControllersRequest {
                    addresses: addresses.addrs().to_vec(),
                })
                .await
        }
        Some(ControllersCmd::Clear) => {
            admin
                .set_controllers(SetControllersRequest { addresses: vec![] })
                .await
        }
    }
    .map_err(|s| conn.status(s))?
    .into_inner();
    print(&reply, format);
    Ok(())
}

fn print(r: &ControllerAddresses, format: Format) {
    match format {
        Format::Json => output::json(&json!({
            "addresses": r.addresses,
            "set_by": r.set_by,
            "set_at": output::time(r.set_at),
        })),
        Format::Table if r.addresses.is_empty() => println!(
            "no controller addresses set: agents keep the ones they joined with \
             (set them with `fleetctl controllers set HOST:PORT,HOST:PORT`)"
        ),
        Format::Table => {
            let rows: Vec<Vec<String>> = r
                .addresses
                .iter()
                .enumerate()
                .map(|(i, a)| vec![(i + 1).to_string(), a.clone()])
                .collect();
            output::table(&["ORDER", "ADDRESS"], &rows);
            println!("set by {} at {}", r.set_by, output::time_or_dash(r.set_at));
        }
    }
}

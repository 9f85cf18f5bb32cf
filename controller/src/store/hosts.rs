//! Enrolled hosts: one record each, and their removal, which revokes every certificate
//! the host holds and forgets the releases it was owed.

use redb::{ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};

use super::credentials::RevokedRecord;
use super::tables::{host_range, CORDONED, DESIRED, HOSTS, REMOVALS, REVOKED, STOPPED};
use super::{db_err, decode, encode, Store, StoreError};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct HostRecord {
    pub name: String,
    pub enrolled_at_ms: i64,
    /// Last peer address seen (IP only).
    pub address: String,
    pub last_seen_ms: i64,
    pub version: String,
    pub hostname: String,
    pub os: String,
    pub kernel: String,
    pub cores: u32,
    pub memory_bytes: u64,
    /// Serials of certificates issued to this host that have not yet expired; all of them
    /// are revoked when the host is removed.
    pub serials: Vec<IssuedSerial>,
    pub cert_expires: i64,
    /// Port of the agent's Prometheus `/metrics` (0: off or not reported yet), from its
    /// last Hello; records written before agents reported it read as 0.
    #[serde(default)]
    pub metrics_port: u32,
    /// fleet-agent package version from the last Hello; empty: not installed from one.
    #[serde(default)]
    pub package_version: String,
    /// Operator-chosen group (Prometheus `group` label); empty for none.
    #[serde(default)]
    pub group: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct IssuedSerial {
    pub serial: String,
    pub not_after: i64,
}

impl Store {
    pub fn hosts(&self) -> Result<Vec<HostRecord>, StoreError> {
        self.all_json(HOSTS)
    }

    /// At most `limit` hosts whose names sort after `after` (all when empty), in order.
    pub fn hosts_page(&self, after: &str, limit: usize) -> Result<Vec<HostRecord>, StoreError> {
        use std::ops::Bound;
        let tx = self.db.begin_read().map_err(db_err)?;
        let table = tx.open_table(HOSTS).map_err(db_err)?;
        let lower = if after.is_empty() {
            Bound::Unbounded
        } else {
            Bound::Excluded(after)
        };
        let mut out = Vec::new();
        for row in table
            .range::<&str>((lower, Bound::Unbounded))
            .map_err(db_err)?
            .take(limit)
        {
            let (k, v) = row.map_err(db_err)?;
            out.push(decode("hosts", k.value(), v.value())?);
        }
        Ok(out)
    }

    /// Every enrolled host's name, in order, without decoding the records.
    pub fn host_names(&self) -> Result<Vec<String>, StoreError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let table = tx.open_table(HOSTS).map_err(db_err)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(db_err)? {
            out.push(row.map_err(db_err)?.0.value().to_owned());
        }
        Ok(out)
    }

    /// How many hosts are enrolled, without reading them.
    pub fn host_count(&self) -> Result<usize, StoreError> {
        use redb::ReadableTableMetadata;
        let tx = self.db.begin_read().map_err(db_err)?;
        let table = tx.open_table(HOSTS).map_err(db_err)?;
        Ok(table.len().map_err(db_err)? as usize)
    }

    pub fn host(&self, name: &str) -> Result<Option<HostRecord>, StoreError> {
        self.get_json(HOSTS, name)
    }

    pub fn put_host(&self, host: &HostRecord) -> Result<(), StoreError> {
        self.put_json(HOSTS, &host.name, host)
    }

    /// Reads, changes and writes one host in a single transaction; `None` if absent.
    pub fn update_host<R>(
        &self,
        name: &str,
        change: impl FnOnce(&mut HostRecord) -> R,
    ) -> Result<Option<R>, StoreError> {
        let tx = self.db.begin_write().map_err(db_err)?;
        let result = {
            let mut table = tx.open_table(HOSTS).map_err(db_err)?;
            let current: Option<HostRecord> = {
                let got = table.get(name).map_err(db_err)?;
                got.map(|v| decode("hosts", name, v.value())).transpose()?
            };
            match current {
                None => None,
                Some(mut host) => {
                    let r = change(&mut host);
                    table
                        .insert(name, encode(&host).as_slice())
                        .map_err(db_err)?;
                    Some(r)
                }
            }
        };
        self.commit(tx)?;
        Ok(result)
    }

    /// Raises `last_seen_ms` of each named host that still exists, in one transaction;
    /// returns how many records changed.
    pub fn record_last_seen(
        &self,
        seen: &std::collections::HashMap<String, i64>,
    ) -> Result<usize, StoreError> {
        let tx = self.db.begin_write().map_err(db_err)?;
        let mut changed = 0;
        {
            let mut table = tx.open_table(HOSTS).map_err(db_err)?;
            for (name, at) in seen {
                let current: Option<HostRecord> = {
                    let got = table.get(name.as_str()).map_err(db_err)?;
                    got.map(|v| decode("hosts", name, v.value())).transpose()?
                };
                if let Some(mut host) = current.filter(|h| h.last_seen_ms < *at) {
                    host.last_seen_ms = *at;
                    table
                        .insert(name.as_str(), encode(&host).as_slice())
                        .map_err(db_err)?;
                    changed += 1;
                }
            }
        }
        self.commit(tx)?;
        Ok(changed)
    }

    /// Removes a host and revokes every certificate it holds, in one transaction, so a
    /// crash can never leave a removed host with a live certificate.
    pub fn remove_host(
        &self,
        name: &str,
        identity: &str,
        now: i64,
    ) -> Result<Option<Vec<RevokedRecord>>, StoreError> {
        let tx = self.db.begin_write().map_err(db_err)?;
        let revoked = {
            let mut hosts = tx.open_table(HOSTS).map_err(db_err)?;
            let host: Option<HostRecord> = {
                let got = hosts.remove(name).map_err(db_err)?;
                got.map(|v| decode("hosts", name, v.value())).transpose()?
            };
            match host {
                None => None,
                Some(host) => {
                    let mut table = tx.open_table(REVOKED).map_err(db_err)?;
                    let mut out = Vec::new();
                    for s in host.serials {
                        let rec = RevokedRecord {
                            serial: s.serial,
                            identity: identity.to_owned(),
                            revoked_at: now,
                            not_after: s.not_after,
                        };
                        table
                            .insert(rec.serial.as_str(), encode(&rec).as_slice())
                            .map_err(db_err)?;
                        out.push(rec);
                    }
                    // A rejoining host starts fresh: no release is owed to a removed one.
                    let mut desired = tx.open_table(DESIRED).map_err(db_err)?;
                    let (from, to) = host_range(name);
                    desired
                        .retain_in(from.as_str()..to.as_str(), |_, _| false)
                        .map_err(db_err)?;
                    for def in [STOPPED, REMOVALS] {
                        let mut t = tx.open_table(def).map_err(db_err)?;
                        t.retain_in(from.as_str()..to.as_str(), |_, _| false)
                            .map_err(db_err)?;
                    }
                    let mut cordoned = tx.open_table(CORDONED).map_err(db_err)?;
                    cordoned.remove(name).map_err(db_err)?;
                    Some(out)
                }
            }
        };
        self.commit(tx)?;
        Ok(revoked)
    }
}

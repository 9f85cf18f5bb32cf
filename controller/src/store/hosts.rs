//! Enrolled hosts: one record each, and their removal, which revokes every certificate
//! the host holds and forgets the releases it was owed.

use std::ops::Bound;

use serde::{Deserialize, Serialize};

use super::credentials::RevokedRecord;
use super::kv::{host_range, span, ALL, CORDONED, DESIRED, HOSTS, REMOVALS, REVOKED, STOPPED};
use super::{decode, encode, Store, StoreError};

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
        let lower = if after.is_empty() {
            Bound::Unbounded
        } else {
            Bound::Excluded(after)
        };
        self.read()?
            .range(HOSTS, (lower, Bound::Unbounded), Some(limit))?
            .into_iter()
            .map(|(k, v)| decode(HOSTS.name, &k, &v))
            .collect()
    }

    /// Every enrolled host's name, in order, without decoding the records.
    pub fn host_names(&self) -> Result<Vec<String>, StoreError> {
        self.read()?.keys(HOSTS, ALL)
    }

    /// How many hosts are enrolled, without reading them.
    pub fn host_count(&self) -> Result<usize, StoreError> {
        Ok(self.read()?.count(HOSTS)? as usize)
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
        let mut tx = self.write()?;
        let current: Option<HostRecord> = tx
            .get(HOSTS, name)?
            .map(|v| decode(HOSTS.name, name, &v))
            .transpose()?;
        let Some(mut host) = current else {
            return Ok(None);
        };
        let r = change(&mut host);
        tx.insert(HOSTS, name, &encode(&host))?;
        self.commit(tx)?;
        Ok(Some(r))
    }

    /// Raises `last_seen_ms` of each named host that still exists, in one transaction;
    /// returns how many records changed.
    pub fn record_last_seen(
        &self,
        seen: &std::collections::HashMap<String, i64>,
    ) -> Result<usize, StoreError> {
        let mut tx = self.write()?;
        let names: Vec<&str> = seen.keys().map(String::as_str).collect();
        let mut updated = Vec::new();
        for (name, v) in tx.get_many(HOSTS, &names)? {
            let mut host: HostRecord = decode(HOSTS.name, &name, &v)?;
            if let Some(at) = seen.get(&name).filter(|at| host.last_seen_ms < **at) {
                host.last_seen_ms = *at;
                updated.push((name, encode(&host)));
            }
        }
        let rows: Vec<(&str, &[u8])> = updated
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect();
        tx.put_many(HOSTS, &rows)?;
        self.commit(tx)?;
        Ok(updated.len())
    }

    /// Removes a host and revokes every certificate it holds, in one transaction, so a
    /// crash can never leave a removed host with a live certificate.
    pub fn remove_host(
        &self,
        name: &str,
        identity: &str,
        now: i64,
    ) -> Result<Option<Vec<RevokedRecord>>, StoreError> {
        let mut tx = self.write()?;
        let host: Option<HostRecord> = tx
            .remove(HOSTS, name)?
            .map(|v| decode(HOSTS.name, name, &v))
            .transpose()?;
        let Some(host) = host else {
            return Ok(None);
        };
        let mut out = Vec::new();
        for s in host.serials {
            let rec = RevokedRecord {
                serial: s.serial,
                identity: identity.to_owned(),
                revoked_at: now,
                not_after: s.not_after,
            };
            tx.insert(REVOKED, &rec.serial, &encode(&rec))?;
            out.push(rec);
        }
        // A rejoining host starts fresh: no release is owed to a removed one.
        let range = host_range(name);
        for t in [DESIRED, STOPPED, REMOVALS] {
            tx.remove_span(t, span(&range))?;
        }
        tx.remove(CORDONED, name)?;
        self.commit(tx)?;
        Ok(Some(out))
    }
}

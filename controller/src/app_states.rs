//! The latest state each host reported for each app, in memory: what `status`, paging,
//! service discovery and fan-outs read without touching the store.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;

use fleet_proto::v1::AppState;

/// Latest state each host reported for each app, for the hosts with a live session (a
/// session's states are dropped when it ends), ordered by (app, host) for paging.
#[derive(Default)]
pub struct AppStates(Mutex<StatesInner>);

#[derive(Default)]
pub struct StatesInner {
    by_app: BTreeMap<(String, String), AppState>,
    by_host: HashMap<String, BTreeSet<String>>,
}

impl AppStates {
    /// Records a report; returns the previous one.
    pub fn update(&self, host: &str, state: AppState) -> Option<AppState> {
        let mut g = self.0.lock().expect("app states lock");
        g.by_host
            .entry(host.to_owned())
            .or_default()
            .insert(state.app.clone());
        g.by_app.insert((state.app.clone(), host.to_owned()), state)
    }

    /// Whether `host` already reported `app` (on this session).
    pub fn knows(&self, host: &str, app: &str) -> bool {
        let g = self.0.lock().expect("app states lock");
        g.by_host.get(host).is_some_and(|apps| apps.contains(app))
    }

    /// Drops everything `host` reported (its session ended).
    pub fn forget_host(&self, host: &str) {
        let mut g = self.0.lock().expect("app states lock");
        if let Some(apps) = g.by_host.remove(host) {
            for app in apps {
                g.by_app.remove(&(app, host.to_owned()));
            }
        }
    }

    /// Drops what `host` reported about `app` (it removed the app).
    pub fn forget(&self, host: &str, app: &str) {
        let mut g = self.0.lock().expect("app states lock");
        g.by_app.remove(&(app.to_owned(), host.to_owned()));
        if let Some(apps) = g.by_host.get_mut(host) {
            apps.remove(app);
        }
    }

    pub fn get(&self, host: &str, app: &str) -> Option<AppState> {
        let g = self.0.lock().expect("app states lock");
        g.by_app.get(&(app.to_owned(), host.to_owned())).cloned()
    }

    pub fn all(&self) -> Vec<(String, AppState)> {
        let g = self.0.lock().expect("app states lock");
        g.by_app
            .iter()
            .map(|((_, h), s)| (h.clone(), s.clone()))
            .collect()
    }

    /// At most `limit` states after `after` (app, host) in (app, host) order, only of
    /// `app` when it is not empty; the bool says whether more follow.
    pub fn page(
        &self,
        app: &str,
        after: Option<(String, String)>,
        limit: usize,
    ) -> (Vec<(String, AppState)>, bool) {
        use std::ops::Bound;
        let g = self.0.lock().expect("app states lock");
        let lower = match after {
            Some(k) => Bound::Excluded(k),
            None => Bound::Included((app.to_owned(), String::new())),
        };
        let mut it = g
            .by_app
            .range((lower, Bound::Unbounded))
            .take_while(|((a, _), _)| app.is_empty() || a == app);
        let page: Vec<(String, AppState)> = it
            .by_ref()
            .take(limit)
            .map(|((_, h), s)| (h.clone(), s.clone()))
            .collect();
        let more = it.next().is_some();
        (page, more)
    }

    /// Host name → the apps it reported.
    pub fn by_host(&self) -> BTreeMap<String, BTreeSet<String>> {
        let g = self.0.lock().expect("app states lock");
        g.by_host
            .iter()
            .map(|(h, apps)| (h.clone(), apps.clone()))
            .collect()
    }

    /// The apps `host` reported.
    pub fn apps_on(&self, host: &str) -> Vec<AppState> {
        let g = self.0.lock().expect("app states lock");
        g.by_host
            .get(host)
            .into_iter()
            .flatten()
            .filter_map(|app| g.by_app.get(&(app.clone(), host.to_owned())).cloned())
            .collect()
    }

    pub fn hosts_running(&self, app: &str) -> Vec<String> {
        use std::ops::Bound;
        let g = self.0.lock().expect("app states lock");
        g.by_app
            .range((
                Bound::Included((app.to_owned(), String::new())),
                Bound::Unbounded,
            ))
            .take_while(|((a, _), _)| a == app)
            .map(|((_, h), _)| h.clone())
            .collect()
    }
}

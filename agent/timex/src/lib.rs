//! Read-only adjtimex(2): the kernel clock discipline's state, for fleet-agent's `timex`
//! collector. Neither nix nor rustix wraps this call, and the agent crate forbids unsafe
//! code, so the one FFI call lives here behind a safe function.

/// The fields of `struct timex` that node_exporter exports, plus the call's return state
/// (`TIME_OK` .. `TIME_ERROR`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timex {
    pub state: i32,
    pub status: i32,
    pub offset: i64,
    pub freq: i64,
    pub maxerror: i64,
    pub esterror: i64,
    pub constant: i64,
    pub tick: i64,
    pub ppsfreq: i64,
    pub jitter: i64,
    pub shift: i32,
    pub stabil: i64,
    pub jitcnt: i64,
    pub calcnt: i64,
    pub errcnt: i64,
    pub stbcnt: i64,
    pub tai: i32,
}

/// `STA_NANO`: `offset` and `jitter` are in nanoseconds rather than microseconds.
pub const STA_NANO: i32 = 0x2000;
/// adjtimex's return value when the clock is not synchronised.
pub const TIME_ERROR: i32 = 5;

/// Reads the clock state; modes 0 changes nothing, so this needs no privilege.
pub fn read() -> std::io::Result<Timex> {
    // SAFETY: `timex` is plain old data, valid when zeroed; modes = 0 makes adjtimex only
    // fill it in, through a pointer to this live, aligned local.
    let mut t: libc::timex = unsafe { std::mem::zeroed() };
    let state = unsafe { libc::adjtimex(&mut t) };
    if state < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(Timex {
        state,
        status: t.status,
        offset: t.offset,
        freq: t.freq,
        maxerror: t.maxerror,
        esterror: t.esterror,
        constant: t.constant,
        tick: t.tick,
        ppsfreq: t.ppsfreq,
        jitter: t.jitter,
        shift: t.shift,
        stabil: t.stabil,
        jitcnt: t.jitcnt,
        calcnt: t.calcnt,
        errcnt: t.errcnt,
        stbcnt: t.stbcnt,
        tai: t.tai,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_hosts_clock_reads() {
        let t = super::read().expect("adjtimex(modes=0) works unprivileged");
        assert!((0..=5).contains(&t.state), "{t:?}");
        assert!(t.tick > 0, "{t:?}");
    }
}

//! When background activities run: schedules from the configuration
//! (`off`, `continuous`, `every 15m`, `daily 02:30`) and the loop that
//! triggers an activity at those times. One instance per activity is the
//! activity's own guard (`archive::agent::Activity`); a trigger that finds
//! it running is skipped, never doubled.

use std::future::Future;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, NaiveTime, Utc};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    /// Never on its own; only when asked (`tiermail archive run`).
    Off,
    /// The next run starts as soon as the last one ends.
    Continuous,
    /// A run starts this long after the previous one started.
    Every(Duration),
    /// Every day at this UTC time.
    Daily(NaiveTime),
}

impl FromStr for Schedule {
    type Err = String;

    fn from_str(s: &str) -> Result<Schedule, String> {
        let s = s.trim();
        let usage = "expected `off`, `continuous`, `every <n>s|m|h|d` or `daily HH:MM` (UTC)";
        if s.eq_ignore_ascii_case("off") {
            return Ok(Schedule::Off);
        }
        if s.eq_ignore_ascii_case("continuous") {
            return Ok(Schedule::Continuous);
        }
        if let Some(rest) = s.strip_prefix("every ") {
            return parse_duration(rest)
                .map(Schedule::Every)
                .map_err(|e| format!("`{s}`: {e}; {usage}"));
        }
        if let Some(rest) = s.strip_prefix("daily ") {
            let t = NaiveTime::parse_from_str(rest.trim(), "%H:%M")
                .map_err(|_| format!("`{s}`: {usage}"))?;
            return Ok(Schedule::Daily(t));
        }
        Err(format!("`{s}`: {usage}"))
    }
}

/// A positive duration written `<n>s`, `<n>m`, `<n>h` or `<n>d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let rest = text.trim();
    // Split off the unit by characters: any text is valid input.
    let cut = rest.char_indices().last().map_or(0, |(i, _)| i);
    let (num, unit) = rest.split_at(cut);
    let bad = || format!("`{rest}` is not a duration like 90s, 15m, 1h or 7d");
    let n: u64 = num.trim().parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        "d" => n.saturating_mul(86_400),
        _ => return Err(bad()),
    };
    if secs == 0 {
        return Err(format!("`{rest}`: the interval must be positive"));
    }
    Ok(Duration::from_secs(secs))
}

impl Schedule {
    /// When the next run is due, given now and when the last one started.
    pub fn next(
        &self,
        now: DateTime<Utc>,
        last_start: Option<DateTime<Utc>>,
    ) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Off => None,
            Schedule::Continuous => Some(now),
            Schedule::Every(d) => Some(match last_start {
                Some(l) => (l + chrono::Duration::from_std(*d).ok()?).max(now),
                None => now,
            }),
            Schedule::Daily(t) => {
                let today = now.date_naive().and_time(*t).and_utc();
                Some(if today > now {
                    today
                } else {
                    today + chrono::Duration::days(1)
                })
            }
        }
    }
}

/// Runs `run` on `schedule` until `stop`; `set_next` is told each due time
/// (for `tiermail status`). `last_start` is when the activity last ran
/// before this start, if known (so a restart does not run it early).
pub async fn drive<F, Fut>(
    name: &'static str,
    schedule: Schedule,
    stop: CancellationToken,
    last_start: Option<DateTime<Utc>>,
    set_next: impl Fn(Option<DateTime<Utc>>),
    mut run: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut last_start = last_start;
    loop {
        let now = Utc::now();
        let Some(due) = schedule.next(now, last_start) else {
            set_next(None);
            return;
        };
        set_next(Some(due));
        let wait = (due - now).to_std().unwrap_or(Duration::ZERO);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => return,
        }
        last_start = Some(Utc::now());
        tracing::info!(activity = name, "scheduled run starting");
        tokio::select! {
            _ = run() => {}
            _ = stop.cancelled() => return,
        }
        if schedule == Schedule::Continuous {
            // A run that found nothing to do must not spin.
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.cancelled() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn parse_and_next() {
        assert_eq!("off".parse::<Schedule>().unwrap(), Schedule::Off);
        assert_eq!(
            "every 15m".parse::<Schedule>().unwrap(),
            Schedule::Every(Duration::from_secs(900))
        );
        for bad in [
            "",
            "sometimes",
            "every",
            "every 0s",
            "every 5x",
            "daily 25:00",
            "daily",
        ] {
            let e = bad.parse::<Schedule>().unwrap_err();
            assert!(
                e.contains("expected") || e.contains("positive"),
                "{bad}: {e}"
            );
        }
        let now = at("2026-11-24T10:00:00Z");
        let daily: Schedule = "daily 02:30".parse().unwrap();
        assert_eq!(daily.next(now, None), Some(at("2026-11-25T02:30:00Z")));
        let later: Schedule = "daily 23:00".parse().unwrap();
        assert_eq!(later.next(now, None), Some(at("2026-11-24T23:00:00Z")));
        let every: Schedule = "every 1h".parse().unwrap();
        assert_eq!(every.next(now, None), Some(now));
        assert_eq!(
            every.next(now, Some(at("2026-11-24T09:30:00Z"))),
            Some(at("2026-11-24T10:30:00Z"))
        );
        assert_eq!(Schedule::Off.next(now, None), None);
    }
}

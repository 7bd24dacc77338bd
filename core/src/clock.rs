//! Wall-clock time as the store keeps it (milliseconds since the Unix epoch) and as the API
//! shows it (RFC 3339, UTC).

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

pub fn now_ms() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// Like [`now_ms`], but never the same value twice in this process and never going back:
/// rows listed newest first by creation time (jobs) keep the order they were made in, even when
/// two are made within one millisecond. Across nodes two rows can still share a millisecond;
/// their order is then by id, as the listing documents.
pub fn now_ms_unique() -> i64 {
    use std::sync::atomic::{AtomicI64, Ordering};
    static LAST: AtomicI64 = AtomicI64::new(0);
    let now = now_ms();
    let mut last = LAST.load(Ordering::Relaxed);
    loop {
        let next = now.max(last + 1);
        match LAST.compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(seen) => last = seen,
        }
    }
}

pub fn format_ms(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| ms.to_string())
}

/// Parses an RFC 3339 timestamp (`2027-01-01T00:00:00Z`) into epoch milliseconds.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    OffsetDateTime::parse(s, &Rfc3339)
        .ok()
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_rfc3339() {
        let ms = parse_rfc3339("2027-01-02T03:04:05Z").unwrap();
        assert_eq!(format_ms(ms), "2027-01-02T03:04:05Z");
        assert_eq!(parse_rfc3339("2027-01-02"), None);
    }

    #[test]
    fn unique_times_strictly_increase() {
        let mut last = now_ms_unique();
        for _ in 0..10_000 {
            let t = now_ms_unique();
            assert!(t > last, "{t} after {last}");
            last = t;
        }
    }
}

/// A time given as RFC 3339 or as a date (`2026-11-01`, midnight UTC).
pub fn parse_time(s: &str) -> Option<i64> {
    parse_rfc3339(s).or_else(|| parse_rfc3339(&format!("{s}T00:00:00Z")))
}

/// The first millisecond of the calendar month (UTC) that `ms` falls in, and of the next one.
pub fn month_bounds(ms: i64) -> (i64, i64) {
    let t = OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let start = t
        .replace_day(1)
        .unwrap_or(t)
        .replace_time(time::Time::MIDNIGHT);
    let (year, month) = match start.month() {
        time::Month::December => (start.year() + 1, time::Month::January),
        m => (start.year(), m.next()),
    };
    let next = start
        .replace_year(year)
        .and_then(|t| t.replace_month(month))
        .unwrap_or(start);
    let to_ms = |t: OffsetDateTime| (t.unix_timestamp_nanos() / 1_000_000) as i64;
    (to_ms(start), to_ms(next))
}

#[cfg(test)]
mod month_tests {
    use super::*;

    #[test]
    fn months_start_at_midnight_on_the_first() {
        let t = parse_rfc3339("2026-11-27T13:05:00Z").unwrap();
        let (start, next) = month_bounds(t);
        assert_eq!(format_ms(start), "2026-11-01T00:00:00Z");
        assert_eq!(format_ms(next), "2026-12-01T00:00:00Z");
        let (start, next) = month_bounds(parse_rfc3339("2026-12-31T23:59:59Z").unwrap());
        assert_eq!(format_ms(start), "2026-12-01T00:00:00Z");
        assert_eq!(format_ms(next), "2027-01-01T00:00:00Z");
        assert_eq!(parse_time("2026-11-01"), Some(start - 30 * 86_400_000));
    }
}

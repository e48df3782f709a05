//! UTC calendar dates from Unix seconds (`SOURCE_DATE_EPOCH`, the clock), without a date crate.

use std::fmt;

/// A UTC date and time to the second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UtcDateTime {
    /// The year (proleptic Gregorian).
    pub year: i64,
    /// 1..=12.
    pub month: u8,
    /// 1..=31.
    pub day: u8,
    /// 0..=23.
    pub hour: u8,
    /// 0..=59.
    pub min: u8,
    /// 0..=59.
    pub sec: u8,
}

impl UtcDateTime {
    /// The date and time `secs` seconds after 1970-01-01T00:00:00Z (negative: before).
    pub fn from_unix(secs: i64) -> UtcDateTime {
        let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
        // Howard Hinnant's days-to-civil algorithm: shift to eras starting on 0000-03-01.
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        // Each narrowed value is bounded by the arithmetic above (day <= 31, rem < 86400).
        UtcDateTime {
            year: yoe + era * 400 + i64::from(month <= 2),
            month: month as u8,
            day: day as u8,
            hour: (rem / 3600) as u8,
            min: (rem / 60 % 60) as u8,
            sec: (rem % 60) as u8,
        }
    }

    /// The current time (the Unix epoch if the clock is before it).
    pub fn now() -> UtcDateTime {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        UtcDateTime::from_unix(secs)
    }
}

/// RFC 3339: `YYYY-MM-DDTHH:MM:SSZ`.
impl fmt::Display for UtcDateTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            self.year, self.month, self.day, self.hour, self.min, self.sec
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates() {
        let s = |secs| UtcDateTime::from_unix(secs).to_string();
        assert_eq!(s(0), "1970-01-01T00:00:00Z");
        assert_eq!(s(1_662_033_600), "2022-09-01T12:00:00Z");
        assert_eq!(s(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(s(315_532_800), "1980-01-01T00:00:00Z");
        assert_eq!(s(4_354_819_199), "2107-12-31T23:59:59Z");
        assert_eq!(s(-1), "1969-12-31T23:59:59Z");
    }
}

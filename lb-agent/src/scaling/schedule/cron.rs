//! The recurrence of a scheduled action: a 5-field Unix cron expression, as EC2 Auto Scaling
//! takes it ("Recurrence ... in Unix cron syntax format. This format consists of five fields
//! separated by white spaces: [Minute] [Hour] [Day_of_Month] [Month_of_Year] [Day_of_Week]",
//! `PutScheduledUpdateGroupAction`), not the 6-field form of EventBridge and Application Auto
//! Scaling; and when it next fires in an IANA time zone.
//!
//! The syntax and matching are Vixie cron's (crontab(5)), the Unix cron of Linux
//! distributions: `*`, numbers, ranges `a-b`, lists `a,b`, steps `*/n` and `a-b/n`, names
//! `JAN`..`DEC` and `SUN`..`SAT` (any case, also in ranges, as cronie takes them), day of week
//! 0 or 7 for Sunday; when both day of month and day of week are restricted (neither starts
//! with `*`) a day matching either fires. A single value with a step (`5/15`) runs from the
//! value to the field's end, as cronie reads it.
//!
//! Across a daylight-saving change AWS says only that "the action automatically adjusts for
//! DST", so the rule is Unix cron's, from Vixie cron(8): an expression at a particular time
//! (neither minute nor hour starts with `*`) whose local time is skipped when clocks go
//! forward fires once, right after the change (at the first instant the clock shows again);
//! whose local time happens twice when clocks go back fires once, the first time. An
//! expression with `*` in the minute or hour follows the clock as it reads: nothing for a
//! skipped time, and both occurrences of a repeated time.

use std::{fmt, str::FromStr};

use jiff::{
    Timestamp,
    civil::{Date, DateTime, Weekday},
    tz::{AmbiguousOffset, TimeZone},
};

/// One of the five fields, named in errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CronField {
    /// Minute, 0-59.
    Minute,
    /// Hour, 0-23.
    Hour,
    /// Day of month, 1-31.
    DayOfMonth,
    /// Month, 1-12 or JAN-DEC.
    Month,
    /// Day of week, 0-7 (0 and 7 are Sunday) or SUN-SAT.
    DayOfWeek,
}

impl CronField {
    const ALL: [CronField; 5] = [
        Self::Minute,
        Self::Hour,
        Self::DayOfMonth,
        Self::Month,
        Self::DayOfWeek,
    ];

    fn bounds(self) -> (u8, u8) {
        match self {
            Self::Minute => (0, 59),
            Self::Hour => (0, 23),
            Self::DayOfMonth => (1, 31),
            Self::Month => (1, 12),
            Self::DayOfWeek => (0, 7),
        }
    }

    fn names(self) -> &'static [&'static str] {
        match self {
            Self::Month => &[
                "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
            ],
            Self::DayOfWeek => &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"],
            _ => &[],
        }
    }

    /// The value a name stands for (`JAN` is 1, `SUN` is 0).
    fn named_value(self, name: &str) -> Option<u8> {
        let first = match self {
            Self::Month => 1,
            _ => 0,
        };
        self.names()
            .iter()
            .position(|n| n.eq_ignore_ascii_case(name))
            .map(|i| first + i as u8)
    }
}

impl fmt::Display for CronField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Minute => "minute",
            Self::Hour => "hour",
            Self::DayOfMonth => "day of month",
            Self::Month => "month",
            Self::DayOfWeek => "day of week",
        })
    }
}

/// What is wrong in one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldProblem {
    /// An empty list element (`1,,2`).
    Empty,
    /// Neither a number nor a name this field takes.
    NotAValue(String),
    /// A number outside the field's range.
    OutOfRange {
        /// The number given.
        value: u32,
        /// The field's lowest value.
        min: u8,
        /// The field's highest value.
        max: u8,
    },
    /// A range whose end comes before its start.
    Reversed {
        /// The range's start.
        start: u8,
        /// The range's end.
        end: u8,
    },
    /// A step that is not a positive number.
    Step(String),
}

impl fmt::Display for FieldProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("an empty element"),
            Self::NotAValue(text) => write!(f, "{text:?} is not a number or a name it takes"),
            Self::OutOfRange { value, min, max } => {
                write!(f, "{value} is outside {min}-{max}")
            }
            Self::Reversed { start, end } => write!(f, "range {start}-{end} ends before it starts"),
            Self::Step(text) => write!(f, "step {text:?} is not a positive number"),
        }
    }
}

/// Why a recurrence is refused (a configuration error), naming the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CronError {
    /// Not five fields.
    #[error(
        "a recurrence has five fields (minute hour day-of-month month day-of-week); {found} given"
    )]
    FieldCount {
        /// How many whitespace-separated fields were given.
        found: usize,
    },
    /// One field is malformed.
    #[error("{field} field {text:?}: {problem}")]
    Field {
        /// The field at fault.
        field: CronField,
        /// The field's text.
        text: String,
        /// What is wrong with it.
        problem: FieldProblem,
    },
    /// The days of month given never occur in the months given (`0 0 30 2 *`).
    #[error("day of month {days:?} never occurs in month {months:?}")]
    NeverFires {
        /// The day-of-month field.
        days: String,
        /// The month field.
        months: String,
    },
}

/// A parsed 5-field cron expression: each field as the set of values it matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronExpression {
    source: String,
    /// Bit `m` set: minute `m` matches.
    minutes: u64,
    /// Bit `h`: hour `h`.
    hours: u32,
    /// Bit `d`: day of month `d` (1-31).
    days_of_month: u32,
    /// Bit `m`: month `m` (1-12).
    months: u16,
    /// Bit `d`: day of week `d`, Sunday 0 (7 folded onto it).
    days_of_week: u8,
    /// The day-of-month field starts with `*` (Vixie cron's DOM_STAR).
    any_day_of_month: bool,
    /// The day-of-week field starts with `*` (DOW_STAR).
    any_day_of_week: bool,
    /// Neither minute nor hour starts with `*`: the DST rule for particular times applies.
    at_particular_time: bool,
}

/// How far ahead a next firing is looked for. Parsing refuses expressions that never fire,
/// so the rarest left (29 February, maybe on one weekday) fires within 28 years; the bound
/// only stops a loop.
const SEARCH_DAYS: i32 = 366 * 29;

impl FromStr for CronExpression {
    type Err = CronError;

    fn from_str(expression: &str) -> Result<Self, CronError> {
        let texts: Vec<&str> = expression.split_whitespace().collect();
        if texts.len() != 5 {
            return Err(CronError::FieldCount { found: texts.len() });
        }
        let mut sets = [0u64; 5];
        for ((field, text), set) in CronField::ALL.iter().zip(&texts).zip(&mut sets) {
            *set = parse_field(*field, text).map_err(|problem| CronError::Field {
                field: *field,
                text: (*text).to_owned(),
                problem,
            })?;
        }
        let [minutes, hours, days_of_month, months, days_of_week] = sets;
        // Sunday is 0 or 7.
        let days_of_week = (days_of_week | (days_of_week >> 7)) & 0x7f;
        let cron = Self {
            source: texts.join(" "),
            minutes,
            hours: hours as u32,
            days_of_month: days_of_month as u32,
            months: months as u16,
            days_of_week: days_of_week as u8,
            any_day_of_month: texts[2].starts_with('*'),
            any_day_of_week: texts[4].starts_with('*'),
            at_particular_time: !texts[0].starts_with('*') && !texts[1].starts_with('*'),
        };
        // With the day of week starting with `*`, the day of month picks the days (alone, or
        // together with a stepped day of week, which every date meets within 28 years): one
        // of them must exist in one of the months (29 February counts: leap years come).
        if cron.any_day_of_week {
            let longest = (1..=12u8)
                .filter(|m| cron.months & (1 << m) != 0)
                .map(|m| match m {
                    2 => 29,
                    4 | 6 | 9 | 11 => 30,
                    _ => 31,
                })
                .max()
                .unwrap_or(0);
            let shortest_day = cron.days_of_month.trailing_zeros();
            if shortest_day > longest {
                return Err(CronError::NeverFires {
                    days: texts[2].to_owned(),
                    months: texts[3].to_owned(),
                });
            }
        }
        Ok(cron)
    }
}

impl fmt::Display for CronExpression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// One field's text -> the set of values it matches (bit `v` for value `v`).
fn parse_field(field: CronField, text: &str) -> Result<u64, FieldProblem> {
    let (min, max) = field.bounds();
    let mut set = 0u64;
    for element in text.split(',') {
        if element.is_empty() {
            return Err(FieldProblem::Empty);
        }
        let (range, step) = match element.split_once('/') {
            Some((range, step)) => {
                let step = step
                    .parse::<u8>()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| FieldProblem::Step(step.to_owned()))?;
                (range, Some(step))
            }
            None => (element, None),
        };
        let (start, end) = if range == "*" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            let (a, b) = (value(field, a)?, value(field, b)?);
            if b < a {
                return Err(FieldProblem::Reversed { start: a, end: b });
            }
            (a, b)
        } else {
            let a = value(field, range)?;
            // `5/15` runs from 5 to the field's end (cronie's reading).
            (a, if step.is_some() { max } else { a })
        };
        let step = usize::from(step.unwrap_or(1));
        for v in (start..=end).step_by(step) {
            set |= 1 << v;
        }
    }
    Ok(set)
}

fn value(field: CronField, text: &str) -> Result<u8, FieldProblem> {
    let (min, max) = field.bounds();
    if let Some(v) = field.named_value(text) {
        return Ok(v);
    }
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(FieldProblem::NotAValue(text.to_owned()));
    }
    let v: u32 = text.parse().unwrap_or(u32::MAX);
    if v < u32::from(min) || v > u32::from(max) {
        return Err(FieldProblem::OutOfRange { value: v, min, max });
    }
    Ok(v as u8)
}

impl CronExpression {
    /// Whether the expression fires on `date` (day of month, month and day of week, with Unix
    /// cron's either-day rule).
    pub fn matches_date(&self, date: Date) -> bool {
        if self.months & (1 << date.month()) == 0 {
            return false;
        }
        let dom = self.days_of_month & (1 << date.day()) != 0;
        let dow = self.days_of_week & (1 << weekday_number(date.weekday())) != 0;
        match (self.any_day_of_month, self.any_day_of_week) {
            (false, false) => dom || dow,
            (true, false) => dow,
            (false, true) => dom,
            (true, true) => dom && dow,
        }
    }

    /// The first firing strictly after `after`, with local times read in `zone`; `None` when
    /// there is none within the search bound (it never fires).
    pub fn next_after(&self, after: Timestamp, zone: &TimeZone) -> Option<Timestamp> {
        // From the day before `after`'s local date: a time repeated when clocks go back may
        // belong to that day.
        let mut day = zone.to_datetime(after).date().yesterday().ok()?;
        let mut found: Option<Timestamp> = None;
        for _ in 0..SEARCH_DAYS {
            if let Some(best) = found {
                // Every firing of a later local day comes after this day's (a day's times
                // all precede the next day's first one), so one more day settles it.
                let next = self.first_on(day, after, zone);
                return Some(next.map_or(best, |n| n.min(best)));
            }
            found = self.first_on(day, after, zone);
            day = day.tomorrow().ok()?;
        }
        found
    }

    /// The earliest firing on local `day` strictly after `after`.
    fn first_on(&self, day: Date, after: Timestamp, zone: &TimeZone) -> Option<Timestamp> {
        if !self.matches_date(day) {
            return None;
        }
        let mut best: Option<Timestamp> = None;
        let mut consider = |t: Timestamp| {
            if t > after && best.is_none_or(|b| t < b) {
                best = Some(t);
            }
        };
        for hour in (0..24i8).filter(|h| self.hours & (1 << h) != 0) {
            for minute in (0..60i8).filter(|m| self.minutes & (1 << m) != 0) {
                let local = day.at(hour, minute, 0, 0);
                for t in self.instants(local, zone) {
                    consider(t);
                }
            }
        }
        best
    }

    /// The instants at which local time `local` fires, under the DST rule in the module doc.
    fn instants(&self, local: DateTime, zone: &TimeZone) -> Vec<Timestamp> {
        let ambiguous = zone.to_ambiguous_timestamp(local);
        match ambiguous.offset() {
            AmbiguousOffset::Unambiguous { offset } => {
                offset.to_timestamp(local).ok().into_iter().collect()
            }
            AmbiguousOffset::Gap { after, .. } => {
                if !self.at_particular_time {
                    return Vec::new();
                }
                // The clock's first reading after the gap: the transition that made it.
                // `local` read with the later offset is an instant just before it.
                let Ok(probe) = after.to_timestamp(local) else {
                    return Vec::new();
                };
                zone.following(probe)
                    .next()
                    .map(|transition| transition.timestamp())
                    .into_iter()
                    .collect()
            }
            AmbiguousOffset::Fold { before, after } => {
                let first = before.to_timestamp(local).ok();
                let second = after.to_timestamp(local).ok();
                if self.at_particular_time {
                    first.into_iter().collect()
                } else {
                    first.into_iter().chain(second).collect()
                }
            }
        }
    }
}

/// Sunday 0 .. Saturday 6, as cron numbers days.
fn weekday_number(weekday: Weekday) -> u8 {
    weekday.to_sunday_zero_offset() as u8
}

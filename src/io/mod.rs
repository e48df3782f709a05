pub mod calendar;
pub mod progress;

"""Training pieces shared by the MASS trainers: schedules, settings, weight transfer."""

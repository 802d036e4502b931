"""ECG datasets: the synthetic cohort, real-data builders and the input pipeline."""

DROP TABLE step_usage;

DROP TABLE leases;
DROP TABLE workers;
DROP TABLE artifacts;
DROP TABLE events;
DROP TABLE steps;
DROP TABLE run_state;
DROP TABLE runs;

DROP TABLE api_accounts;
DROP INDEX steps_account_in_flight;
ALTER TABLE steps DROP COLUMN account;

ALTER TABLE api_accounts DROP COLUMN ceiling;

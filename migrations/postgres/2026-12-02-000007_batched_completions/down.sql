DROP FUNCTION loopd_complete_and_claim_many(JSONB, TEXT[]);

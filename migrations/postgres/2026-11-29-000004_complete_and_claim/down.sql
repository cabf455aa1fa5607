DROP FUNCTION loopd_complete_and_claim(text, text, bigint, jsonb, jsonb, jsonb, jsonb, jsonb,
                                       jsonb, text[], bigint, bigint, text[], text[]);
DROP INDEX steps_run_implementations;


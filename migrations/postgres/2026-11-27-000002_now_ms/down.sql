DROP FUNCTION loopd_now_ms();

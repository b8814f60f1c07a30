-- Exponential backoff kept in the database: when apalis records a failed attempt that will be
-- retried, push the job's run_at into the future (base * 2^(attempts-1), capped), so no worker
-- sleeps in-process and the delay survives restarts. apalis's get_jobs only takes jobs whose
-- run_at has passed.
CREATE OR REPLACE FUNCTION public.trainyard_retry_backoff() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    base DOUBLE PRECISION := 2.0;
    cap  DOUBLE PRECISION := 300.0;
BEGIN
    IF NEW.status = 'Failed' AND OLD.status IS DISTINCT FROM 'Failed'
       AND NEW.attempts < NEW.max_attempts THEN
        SELECT p.base_secs, p.max_secs INTO base, cap
        FROM public.queue_policy p WHERE p.queue = NEW.job_type;
        IF base IS NULL THEN base := 2.0; cap := 300.0; END IF;
        NEW.run_at := now() + make_interval(
            secs => LEAST(cap, base * power(2, GREATEST(NEW.attempts, 1) - 1)));
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER trainyard_retry_backoff
    BEFORE UPDATE OF status ON apalis.jobs
    FOR EACH ROW EXECUTE FUNCTION public.trainyard_retry_backoff();

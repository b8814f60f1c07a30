-- The backoff trigger fires only on the status change it acts on. Without a WHEN clause every
-- status update of every job (fetched, running, done) called the PL/pgSQL function just to
-- return; a WHEN condition is evaluated by the server without that call.
DROP TRIGGER trainyard_retry_backoff ON apalis.jobs;
CREATE TRIGGER trainyard_retry_backoff
    BEFORE UPDATE OF status ON apalis.jobs
    FOR EACH ROW
    WHEN (NEW.status = 'Failed' AND OLD.status IS DISTINCT FROM 'Failed')
    EXECUTE FUNCTION public.trainyard_retry_backoff();

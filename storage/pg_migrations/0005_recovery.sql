-- storage.ledger.recover as one statement: close an open job whose process is gone, its owner's
-- lease checked again in the same transaction (a process that was only slow keeps its job).

CREATE FUNCTION imagine_recover(
    p_job_id TEXT, p_owner TEXT, p_lease DOUBLE PRECISION, p_proven_dead BOOLEAN, p_message TEXT,
    p_now DOUBLE PRECISION
) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_job jobs;
BEGIN
    PERFORM imagine_write_lock();
    SELECT * INTO v_job FROM jobs WHERE id = p_job_id AND status IN ('queued', 'running');
    IF NOT FOUND OR v_job.instance_id IS DISTINCT FROM p_owner THEN
        RETURN NULL;
    END IF;
    IF p_owner IS NOT NULL AND NOT p_proven_dead AND EXISTS (
        SELECT 1 FROM instances WHERE id = p_owner AND stopped_at IS NULL AND heartbeat_at >= p_now - p_lease
    ) THEN
        RETURN NULL;  -- its lease is held again
    END IF;
    IF v_job.delivering_at IS NOT NULL THEN
        RETURN imagine_settle(p_job_id, COALESCE(v_job.ready_count, v_job.cost), NULL, NULL,
                              v_job.gpu_seconds, p_now, 'delivery cut off', NULL);
    END IF;
    RETURN imagine_refund(p_job_id, 'interrupted', p_message, p_now, NULL);
END
$$;

-- storage/migrations/0003_web_images.sql in PostgreSQL's words, and the settle of a job whose images
-- wait for their first download, from whichever host serves it.

CREATE TABLE web_images (
    job_id      TEXT NOT NULL,
    image_index INTEGER NOT NULL,
    png         BYTEA NOT NULL,
    bytes       INTEGER NOT NULL,
    created_at  DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (job_id, image_index)
);
-- PNG is compressed already: stored out of line without another round of compression.
ALTER TABLE web_images ALTER COLUMN png SET STORAGE EXTERNAL;
CREATE INDEX web_images_created ON web_images(created_at);

-- As storage/ledger.py's settle_ready: an open job whose images are made (ready_at set) is charged
-- for them whoever owns it, its delivery claimed in the same transaction; NULL when it is closed
-- already (settled by another host's download, or refunded) or not ready.
CREATE FUNCTION imagine_settle_ready(p_job_id TEXT, p_now DOUBLE PRECISION, p_note TEXT)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_job jobs;
BEGIN
    PERFORM imagine_write_lock();
    SELECT * INTO v_job FROM jobs
    WHERE id = p_job_id AND status IN ('queued', 'running') AND ready_at IS NOT NULL;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    UPDATE jobs SET delivering_at = COALESCE(delivering_at, p_now) WHERE id = p_job_id;
    RETURN imagine_settle(p_job_id, COALESCE(v_job.ready_count, v_job.cost), NULL::BIGINT, v_job.model,
                          v_job.gpu_seconds, p_now, p_note, NULL::TEXT);
END
$$;

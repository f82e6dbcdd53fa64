-- The writes of storage/ledger.py as server-side functions: on PostgreSQL each is one statement (one
-- round trip, pipelined with the rest of its group commit) instead of a dozen. Every write
-- transaction first takes the store's write lock (the advisory lock 7262), the same rule SQLite's
-- BEGIN IMMEDIATE keeps: a reservation's checks and its writes see no other host's writes between
-- them, and write transactions never deadlock. The contract tests run the Python and these
-- functions against the same scenarios.

CREATE FUNCTION imagine_write_lock() RETURNS void LANGUAGE sql AS
$$ SELECT pg_advisory_xact_lock(7262) $$;

CREATE FUNCTION imagine_quota(p_user TEXT, p_day TEXT, p_default INTEGER) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'user_id', p_user, 'day', p_day,
        'allowance', COALESCE(u.daily_allowance, p_default),
        'used', COALESCE(d.used, 0),
        'bonus', u.bonus,
        'reserved', (SELECT COALESCE(SUM(cost), 0) FROM jobs j
                     WHERE j.user_id = u.id AND j.status IN ('queued', 'running')),
        'override', u.daily_allowance IS NOT NULL)
    FROM users u LEFT JOIN daily_usage d ON d.user_id = u.id AND d.day = p_day
    WHERE u.id = p_user
$$;

CREATE FUNCTION imagine_position(p_job jobs) RETURNS INTEGER LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN p_job.status NOT IN ('queued', 'running') THEN 0 ELSE (
        SELECT COUNT(*)::INTEGER FROM jobs
        WHERE status IN ('queued', 'running') AND ready_at IS NULL AND created_at < p_job.created_at)
    END
$$;

-- The month's GPU time: the ceiling in force (an admin's, else the setting's), spent and held.
CREATE FUNCTION imagine_budget(p_month TEXT, p_default BIGINT) RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT COALESCE(
        (SELECT jsonb_build_object('month', p_month, 'ceiling_ms', COALESCE(ceiling_ms, p_default),
                                   'spent_ms', spent_ms, 'held_ms', held_ms,
                                   'override', ceiling_ms IS NOT NULL)
         FROM budget_months WHERE month = p_month),
        jsonb_build_object('month', p_month, 'ceiling_ms', p_default, 'spent_ms', 0, 'held_ms', 0,
                           'override', false))
$$;

-- The jobs that hold a place in the queue (open, images not made yet: what `max_open` bounds), kept
-- by triggers on jobs in the transaction that changes them, so a reservation reads one row under the
-- write lock instead of counting: the count walked every index entry of the rows changed since the
-- last vacuum (81 us a reservation with one gateway process, 189 us with two). Triggers, not the
-- functions, so every way a job opens or closes (COPY of `imagine db copy` too) keeps it exact.
CREATE TABLE queue_length (
    one       BOOLEAN PRIMARY KEY DEFAULT true CHECK (one),
    open_jobs INTEGER NOT NULL CHECK (open_jobs >= 0)
);
INSERT INTO queue_length (open_jobs)
SELECT COUNT(*) FROM jobs WHERE status IN ('queued', 'running') AND ready_at IS NULL;

CREATE FUNCTION imagine_queue_moved() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE queue_length SET open_jobs = open_jobs + TG_ARGV[0]::INTEGER;
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_queue_in AFTER INSERT ON jobs FOR EACH ROW
    WHEN (NEW.status IN ('queued', 'running') AND NEW.ready_at IS NULL)
    EXECUTE FUNCTION imagine_queue_moved(1);
CREATE TRIGGER jobs_queue_out AFTER DELETE ON jobs FOR EACH ROW
    WHEN (OLD.status IN ('queued', 'running') AND OLD.ready_at IS NULL)
    EXECUTE FUNCTION imagine_queue_moved('-1');
CREATE TRIGGER jobs_queue_joined AFTER UPDATE OF status, ready_at ON jobs FOR EACH ROW
    WHEN (NOT (OLD.status IN ('queued', 'running') AND OLD.ready_at IS NULL)
          AND NEW.status IN ('queued', 'running') AND NEW.ready_at IS NULL)
    EXECUTE FUNCTION imagine_queue_moved(1);
CREATE TRIGGER jobs_queue_left AFTER UPDATE OF status, ready_at ON jobs FOR EACH ROW
    WHEN (OLD.status IN ('queued', 'running') AND OLD.ready_at IS NULL
          AND NOT (NEW.status IN ('queued', 'running') AND NEW.ready_at IS NULL))
    EXECUTE FUNCTION imagine_queue_moved('-1');
CREATE FUNCTION imagine_queue_emptied() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE queue_length SET open_jobs = 0;
    RETURN NULL;
END
$$;
CREATE TRIGGER jobs_queue_truncated AFTER TRUNCATE ON jobs
    FOR EACH STATEMENT EXECUTE FUNCTION imagine_queue_emptied();

CREATE FUNCTION imagine_reserve(p jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_job jobs;
    v_user TEXT := p->>'user_id';
    v_day TEXT := p->>'day';
    v_cost INTEGER := (p->>'cost')::INTEGER;
    v_now DOUBLE PRECISION := (p->>'now')::DOUBLE PRECISION;
    v_unlimited BOOLEAN := (p->>'unlimited')::BOOLEAN;
    v_ban TEXT;
    v_open INTEGER;
    v_user_open INTEGER;
    v_quota jsonb;
    v_left INTEGER;
    v_daily INTEGER := 0;
    v_bonus INTEGER := 0;
    v_relax BOOLEAN := COALESCE((p->>'relax')::BOOLEAN, false);
    v_cost_now INTEGER := (p->>'cost')::INTEGER;
    v_relax_today INTEGER;
    v_hold BIGINT := COALESCE((p->>'budget_hold_ms')::BIGINT, 0);
    v_month TEXT := left(p->>'day', 7);
    v_budget jsonb;
BEGIN
    PERFORM imagine_write_lock();
    SELECT * INTO v_job FROM jobs WHERE id = p->>'job_id';
    IF FOUND THEN
        RETURN jsonb_build_object('job', to_jsonb(v_job), 'created', false,
                                  'position', imagine_position(v_job));
    END IF;
    SELECT reason INTO v_ban FROM bans WHERE user_id = v_user;
    IF FOUND THEN
        RETURN jsonb_build_object('refused', 'banned', 'ban_reason', v_ban);
    END IF;
    SELECT open_jobs INTO v_open FROM queue_length;
    IF NOT v_unlimited THEN
        SELECT COUNT(*) INTO v_user_open FROM jobs
        WHERE user_id = v_user AND status IN ('queued', 'running');
        IF v_user_open >= (p->>'max_user_open')::INTEGER THEN
            RETURN jsonb_build_object('refused', 'user_queue', 'open_jobs', v_user_open);
        END IF;
    END IF;
    IF v_open >= (p->>'max_open')::INTEGER THEN
        RETURN jsonb_build_object('refused', 'queue', 'open_jobs', v_open);
    END IF;
    v_quota := COALESCE(
        imagine_quota(v_user, v_day, (p->>'default_allowance')::INTEGER),
        jsonb_build_object('user_id', v_user, 'day', v_day, 'allowance', (p->>'default_allowance')::INTEGER,
                           'used', 0, 'bonus', 0, 'reserved', 0, 'override', false));
    v_left := GREATEST(0, (v_quota->>'allowance')::INTEGER - (v_quota->>'used')::INTEGER);
    IF v_relax THEN
        IF NOT v_unlimited AND v_left + (v_quota->>'bonus')::INTEGER >= v_cost THEN
            RETURN jsonb_build_object('refused', 'relax_unneeded', 'quota', v_quota);
        END IF;
        SELECT COUNT(*) INTO v_relax_today FROM jobs
        WHERE user_id = v_user AND day = v_day AND relax = 1 AND status <> 'failed';
        IF v_relax_today >= COALESCE((p->>'relax_daily')::INTEGER, 0) THEN
            RETURN jsonb_build_object('refused', 'relax_used', 'quota', v_quota, 'open_jobs', v_relax_today);
        END IF;
        v_cost_now := 0;
    ELSIF NOT v_unlimited THEN
        IF v_left + (v_quota->>'bonus')::INTEGER < v_cost THEN
            RETURN jsonb_build_object('refused', 'credits', 'quota', v_quota);
        END IF;
        v_daily := LEAST(v_cost, v_left);
        v_bonus := v_cost - v_daily;
    END IF;
    IF v_hold > 0 THEN
        INSERT INTO budget_months (month) VALUES (v_month) ON CONFLICT (month) DO NOTHING;
        v_budget := imagine_budget(v_month, (p->>'budget_ceiling_ms')::BIGINT);
        IF (v_budget->>'ceiling_ms') IS NOT NULL AND (v_budget->>'spent_ms')::BIGINT
                + (v_budget->>'held_ms')::BIGINT + v_hold > (v_budget->>'ceiling_ms')::BIGINT THEN
            RETURN jsonb_build_object('refused', 'budget', 'budget', v_budget);
        END IF;
        UPDATE budget_months SET held_ms = held_ms + v_hold WHERE month = v_month;
    END IF;
    INSERT INTO users (id, created_at) VALUES (v_user, v_now) ON CONFLICT (id) DO NOTHING;
    INSERT INTO jobs (id, user_id, request, status, cost, day, daily, bonus, seed, reply,
                      instance_id, created_at, relax, budget_hold_ms)
    VALUES (p->>'job_id', v_user, p->>'request', 'queued', v_cost_now, v_day, v_daily, v_bonus,
            (p->>'seed')::BIGINT, p->>'reply', p->>'instance_id', v_now, v_relax::INTEGER, v_hold)
    RETURNING * INTO v_job;
    INSERT INTO ledger (user_id, job_id, kind, credits, daily, bonus, day, note, created_at)
    VALUES (v_user, v_job.id, 'reserve', v_cost_now, v_daily, -v_bonus, v_day,
            CASE WHEN v_relax THEN 'relax' WHEN v_unlimited THEN 'unlimited' END, v_now);
    IF v_daily > 0 THEN
        INSERT INTO daily_usage (user_id, day, used) VALUES (v_user, v_day, v_daily)
        ON CONFLICT (user_id, day) DO UPDATE SET used = daily_usage.used + excluded.used;
    END IF;
    IF v_bonus > 0 THEN
        UPDATE users SET bonus = bonus - v_bonus WHERE id = v_user;
    END IF;
    RETURN jsonb_build_object(
        'job', to_jsonb(v_job), 'created', true, 'position', v_open,
        'quota', v_quota || jsonb_build_object(
            'used', (v_quota->>'used')::INTEGER + v_daily,
            'bonus', (v_quota->>'bonus')::INTEGER - v_bonus,
            'reserved', (v_quota->>'reserved')::INTEGER + v_cost_now,
            'unlimited', v_unlimited));
END
$$;

-- Give back `p_credits` of a job's reservation: bonus first (it never expires), then daily.
CREATE FUNCTION imagine_give_back(p_job jobs, p_credits INTEGER, p_now DOUBLE PRECISION, p_note TEXT)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_bonus INTEGER := LEAST(p_credits, p_job.bonus);
    v_daily INTEGER := LEAST(p_credits - LEAST(p_credits, p_job.bonus), p_job.daily);
BEGIN
    IF p_credits <= 0 THEN
        RETURN;
    END IF;
    INSERT INTO ledger (user_id, job_id, kind, credits, daily, bonus, day, note, created_at)
    VALUES (p_job.user_id, p_job.id, 'refund', p_credits, -v_daily, v_bonus, p_job.day, p_note, p_now);
    IF v_daily > 0 THEN
        UPDATE daily_usage SET used = used - v_daily WHERE user_id = p_job.user_id AND day = p_job.day;
    END IF;
    IF v_bonus > 0 THEN
        UPDATE users SET bonus = bonus + v_bonus WHERE id = p_job.user_id;
    END IF;
END
$$;

CREATE FUNCTION imagine_settle(
    p_job_id TEXT, p_delivered INTEGER, p_seed BIGINT, p_model TEXT, p_gpu DOUBLE PRECISION,
    p_now DOUBLE PRECISION, p_note TEXT, p_instance TEXT
) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_job jobs;
    v_spent INTEGER;
    v_used BIGINT;
BEGIN
    PERFORM imagine_write_lock();
    SELECT * INTO v_job FROM jobs WHERE id = p_job_id AND status IN ('queued', 'running');
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF p_instance IS NOT NULL AND v_job.instance_id IS DISTINCT FROM p_instance THEN
        RETURN NULL;  -- fenced: another process took this job over
    END IF;
    v_spent := GREATEST(0, LEAST(p_delivered, v_job.cost));
    INSERT INTO ledger (user_id, job_id, kind, credits, daily, bonus, day, note, created_at)
    VALUES (v_job.user_id, v_job.id, 'settle', v_spent, 0, 0, v_job.day, NULLIF(p_note, ''), p_now);
    PERFORM imagine_give_back(v_job, v_job.cost - v_spent, p_now, COALESCE(NULLIF(p_note, ''), 'not delivered'));
    v_used := CASE WHEN v_job.budget_hold_ms <= 0 THEN 0  -- a job that held no budget charges none
                   WHEN p_gpu IS NULL THEN v_job.budget_hold_ms ELSE GREATEST(0, round(p_gpu * 1000)) END;
    IF v_job.budget_hold_ms > 0 THEN  -- its hold leaves the month, what it used joins the spend
        UPDATE budget_months SET held_ms = held_ms - v_job.budget_hold_ms, spent_ms = spent_ms + v_used
        WHERE month = left(v_job.day, 7);
    END IF;
    UPDATE jobs SET status = 'succeeded', spent = v_spent, refunded = v_job.cost - v_spent,
        seed = COALESCE(p_seed, seed), model = p_model, gpu_seconds = p_gpu, finished_at = p_now,
        budget_spent_ms = v_used
    WHERE id = p_job_id RETURNING * INTO v_job;
    RETURN to_jsonb(v_job);
END
$$;

CREATE FUNCTION imagine_refund(
    p_job_id TEXT, p_error_kind TEXT, p_error TEXT, p_now DOUBLE PRECISION, p_gpu DOUBLE PRECISION
) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_job jobs;
BEGIN
    PERFORM imagine_write_lock();
    SELECT * INTO v_job FROM jobs WHERE id = p_job_id AND status IN ('queued', 'running');
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    PERFORM imagine_give_back(v_job, v_job.cost, p_now, p_error_kind);
    IF v_job.budget_hold_ms > 0 THEN  -- a failed job's GPU time goes back to the month
        UPDATE budget_months SET held_ms = held_ms - v_job.budget_hold_ms WHERE month = left(v_job.day, 7);
    END IF;
    UPDATE jobs SET status = 'failed', refunded = cost, error_kind = p_error_kind, error = p_error,
        gpu_seconds = p_gpu, finished_at = p_now
    WHERE id = p_job_id RETURNING * INTO v_job;
    RETURN to_jsonb(v_job);
END
$$;

-- Add (or, negative, take back) bonus credits: {"bonus": the new balance}, or {"refused": true,
-- "bonus": the balance} when more would be taken back than the user has.
CREATE FUNCTION imagine_grant(p_user TEXT, p_credits INTEGER, p_by TEXT, p_now DOUBLE PRECISION)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_bonus INTEGER;
BEGIN
    PERFORM imagine_write_lock();
    INSERT INTO users (id, created_at) VALUES (p_user, p_now) ON CONFLICT (id) DO NOTHING;
    SELECT bonus INTO v_bonus FROM users WHERE id = p_user;
    IF v_bonus + p_credits < 0 THEN
        RETURN jsonb_build_object('refused', true, 'bonus', v_bonus);
    END IF;
    INSERT INTO ledger (user_id, job_id, kind, credits, daily, bonus, day, note, created_at)
    VALUES (p_user, NULL, 'grant', p_credits, 0, p_credits, NULL, 'by ' || p_by, p_now);
    UPDATE users SET bonus = bonus + p_credits WHERE id = p_user;
    RETURN jsonb_build_object('bonus', v_bonus + p_credits);
END
$$;

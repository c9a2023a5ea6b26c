"""Clip quality after each job: CLIP prompt consistency, image-to-video consistency, motion, ratings.

- frames.py: decode a clip once (PyAV) into flow frames (256 px short side) and evenly sampled frames.
- clip_score.py: CLIP prompt-frame cosine (local weights only), device policy, 100·max(cos, 0) reporting.
- i2v.py: VBench-I2V's i2v_subject on any `ImageEncoder` (CLIP's vision tower, or I2VGen-XL's own).
- motion.py: Farneback smoothness (Lagrangian jerk, brightness flicker), dynamic degree, VBench flickering.
- combined.py: the combined score, its weights, the CLIP calibration band/baseline, the low-quality flag.
- assess.py: score one clip (decode once; motion, CLIP, i2v; the combined score).
- record.py: one job's result and its `quality` point, both ways.
- schedule.py: when a clip is scored: between jobs on the scoring device, or on the CPU after a bounded wait.
- history.py: results, the CLIP baseline and the unscored backlog read back from the store after a restart.
- scorer.py: the bounded queue and worker; results per job; `quality` points; Prometheus metrics.
- monitor/web/quality.py serves GET /monitor/api/jobs/<id>/quality, POST /monitor/api/jobs/<id>/rating.

Metrics (on the registry given to QualityScorer): `i2v_quality_score` (histogram of combined scores, observed
once per scored clip, not again on a rating), `i2v_quality_scoring_duration_seconds`,
`i2v_quality_jobs_total{outcome=scored|unscorable|rejected}`, `i2v_quality_low_total`,
`i2v_quality_write_errors_total`, `i2v_quality_queue_pending` (clips waiting to be scored),
`i2v_quality_deferred_total` (clips scored beside a running job after the longest wait for a gap between jobs).

How this differs from VBench: VBench's motion smoothness interpolates frames with AMT and its dynamic degree
uses RAFT flow, neither of whose weights can be had here, so Farneback flow stands in (it underestimates large,
fast motion); its i2v_subject runs on DINO features, here on CLIP's. Temporal flickering is VBench's own formula.
"""

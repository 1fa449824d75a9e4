"""Fixtures for paths the earlier sets did not reach (issue 24, "tests that can fail").

Called by make_fixtures.py after everything else, so the files it already writes do not change; every
file here is self-contained (it holds the inputs its references were computed from), so it is
consistent with itself on whatever machine it is regenerated.

* `scheduler-steps.tensor` (shared): diffusers' DPMSolverMultistepScheduler and its inverse on their
  own at 14, 15 and 16 steps, around `lower_order_final`'s switch (`len(timesteps) < 15`), for the
  configs where the switch changes an update; and DDIMScheduler.step with eta 0.5 and 1.0 and a
  seeded generator (the draw and the step).
* `conv.tensor` (shared): torch's conv2d for shapes that take each of diffedit's convolution paths
  (small images, bands, Winograd F(2x2, 3x3)), with the weights and inputs.
* `sd1/ref/eta-steps.tensor`, `sd2/ref/eta-steps.tensor`: the pipeline's __call__ with DDIM and
  eta 1.0, every step (the draw, the CFG prediction, scheduler.step's output, the blend).

See Tests/Fixtures/README.md (sections 13-15) for every record.
"""
import os

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler

import diffusers.schedulers.scheduling_ddim as DDIM_MODULE

import fixtures_schedulers

GENERATED = ["scheduler-steps.tensor", "conv.tensor"]  # plus sd1/ref/eta-steps.tensor, sd2/ref/eta-steps.tensor

# ----------------------------------------------------------------------------------------------
# scheduler-steps.tensor
# ----------------------------------------------------------------------------------------------
# diffusers 0.42.1 DPMSolverMultistepScheduler.step:
#   lower_order_final  = step_index == len(timesteps) - 1 and (euler_at_final or
#                        (lower_order_final and len(timesteps) < 15) or final_sigmas_type == "zero")
#   lower_order_second = step_index == len(timesteps) - 2 and lower_order_final and len(timesteps) < 15
# so `< 15` only shows where the last step is not first order anyway (final_sigmas_type sigma_min,
# and the inverse scheduler, whose last σ is never zero) or where the solver is third order (the step
# before the last). The variants below are those, plus controls.
LOF_STEPS = (14, 15, 16)
LOF_RUNS = (1.0, 0.8)  # strengths: the whole schedule, and the pipeline's tail of it (t_start > 0)


def lof_variants(mf):
    sd1, sd2 = mf.SD1_SCHED, mf.SD2_SCHED
    return [
        ("sd1", dict(sd1)),                                   # order 2, final σ zero: forward unaffected, inverse affected
        ("sd2", dict(sd2)),                                   # the same, v-prediction
        ("sigma_min", dict(sd1, final_sigmas_type="sigma_min")),  # order 2: the last forward step
        ("order3", dict(sd1, solver_order=3)),                # the step before the last
        ("order3_sigma_min", dict(sd1, solver_order=3, final_sigmas_type="sigma_min")),  # both
        ("order3_vpred_trailing", dict(sd2, solver_order=3, timestep_spacing="trailing")),
        ("no_lower_order_final", dict(sd1, lower_order_final=False, solver_order=3,
                                      final_sigmas_type="sigma_min")),  # control: never lowered
    ]


ETA_VARIANTS = ("sd1", "sd2", "clip")
ETA_CASES = ((50, 10), (50, -1), (7, 1))  # (num_inference_steps, index of the timestep), as scheduler.tensor
ETA_VALUES = (0.5, 1.0)
ETA_SEED = 3


def ref_scheduler_steps(out, mf):
    st = mf.Stream(os.path.join(out, "scheduler-steps.tensor"))
    g = torch.Generator("cpu").manual_seed(5678)
    sample = torch.randn(2, 4, 2, 2, generator=g)
    model_outputs = torch.randn(16, 2, 4, 2, 2, generator=g)
    st.add("lof.input.sample", sample, call="randn(2,4,2,2) #1 of torch.Generator('cpu').manual_seed(5678)")
    st.add("lof.input.model_output", model_outputs,
           call="randn(16,2,4,2,2) #2 of the same generator; step k of every run gets model_output[k]")

    def run(s, ts):
        x, outs = sample, []
        for k, t in enumerate(ts):
            x = s.step(model_outputs[k], t, x).prev_sample
            outs.append(x)
        return torch.stack(outs)

    report = {}
    for name, source in lof_variants(mf):
        fwd, inv = fixtures_schedulers.dpm_pair(source)
        # The same schedulers with lower_order_final off: where the runs differ, the switch acted.
        fwd_off, inv_off = fixtures_schedulers.dpm_pair(dict(source, lower_order_final=False))
        p = "lof.%s." % name
        st.add(p + "config", fwd.alphas_cumprod, source_json=mf.jdump(source),
               config_json=mf.config_json(fwd.config), inverse_config_json=mf.config_json(inv.config),
               call="alphas_cumprod of DPMSolverMultistepScheduler.from_config(DDIMScheduler.from_config(source_json).config)")
        for n in LOF_STEPS:
            fwd.set_timesteps(n)
            inv.set_timesteps(n)
            st.add(p + "timesteps.%d" % n, fwd.timesteps, call="set_timesteps(%d); timesteps" % n)
            st.add(p + "sigmas.%d" % n, fwd.sigmas, call="set_timesteps(%d); sigmas" % n)
            st.add(p + "inverse.timesteps.%d" % n, inv.timesteps, call="inverse set_timesteps(%d); timesteps" % n)
            st.add(p + "inverse.sigmas.%d" % n, inv.sigmas, call="inverse set_timesteps(%d); sigmas" % n)
            for strength in LOF_RUNS:
                s0 = fixtures_schedulers.t_start(n, strength)
                for direction, s, s_off in (("", fwd, fwd_off), ("inverse.", inv, inv_off)):
                    s.set_timesteps(n)
                    s_off.set_timesteps(n)
                    if direction:
                        ts = s.timesteps if s0 == 0 else s.timesteps[:-s0]
                    else:
                        ts = s.timesteps[s0:]
                    r, r_off = run(s, ts), run(s_off, ts)
                    # (NaN-aware: the inverse trailing schedule's last step has h = 0 and gives NaN, as
                    # the full-strength inverse runs of dpm-scheduler.tensor's trailing variants do)
                    lowered = not torch.allclose(r, r_off, rtol=0, atol=0, equal_nan=True)
                    # The switch acts exactly below 15 steps, and only where an update changes.
                    if n >= 15 or source.get("lower_order_final") is False:
                        assert not lowered, (name, n, strength, direction)
                    report.setdefault("%s%s" % (direction, name), {})[(n, strength)] = lowered
                    if direction:
                        what = "inverse set_timesteps(%d); for k, t in enumerate(timesteps%s)" % (
                            n, "[:-%d]" % s0 if s0 else "")
                    else:
                        what = "set_timesteps(%d); for k, t in enumerate(timesteps[%d:])" % (n, s0)
                    st.add(p + "%srun.n%d.s%s" % (direction, n, strength), r, timesteps_json=mf.jdump(ts.tolist()),
                           lower_order_final_changes_it=str(lowered).lower(),
                           call=what + ": x = step(lof.input.model_output[k], t, x).prev_sample from "
                                       "lof.input.sample; every step's x")
    # The fixture must be able to catch `< 15` moved by one either way: at 14 steps the switch changes
    # some run of every variant that has it on (forward and inverse), at 15 and 16 none (asserted above).
    for name, source in lof_variants(mf):
        if source.get("lower_order_final") is False:
            continue
        assert report["inverse." + name][(14, 1.0)], name
        if source.get("solver_order") == 3 or source.get("final_sigmas_type") == "sigma_min":
            assert report[name][(14, 1.0)], name

    # DDIMScheduler.step with eta > 0: the draw and the step.
    g = torch.Generator("cpu").manual_seed(2468)
    dsample = torch.randn(2, 4, 8, 8, generator=g)
    doutput = torch.randn(2, 4, 8, 8, generator=g)
    st.add("ddim.input.sample", dsample, call="randn(2,4,8,8) #1 of torch.Generator('cpu').manual_seed(2468)")
    st.add("ddim.input.model_output", doutput, call="randn(2,4,8,8) #2 of the same generator")
    draws = []
    orig = DDIM_MODULE.randn_tensor

    def randn_tensor(*a, **k):
        r = orig(*a, **k)
        draws.append(r.clone())
        return r
    noise = torch.randn(dsample.shape, generator=torch.Generator("cpu").manual_seed(ETA_SEED))
    st.add("ddim.variance_noise", noise,
           call="randn(2,4,8,8) of a fresh torch.Generator('cpu').manual_seed(%d): what every eta step below "
                "draws (asserted)" % ETA_SEED)
    variants = {"sd1": mf.SD1_SCHED, "sd2": mf.SD2_SCHED,
                "clip": dict(mf.SD1_SCHED, clip_sample=True, clip_sample_range=1.0)}
    for name in ETA_VARIANTS:
        s = DDIMScheduler(**variants[name])
        st.add("ddim.%s.config" % name, s.alphas_cumprod, config_json=mf.config_json(s.config),
               call="DDIMScheduler(**config).alphas_cumprod")
        for n, idx in ETA_CASES:
            s.set_timesteps(n)
            t = s.timesteps[idx]
            plain = s.step(doutput, t, dsample, eta=0.0).prev_sample
            for eta in ETA_VALUES:
                draws.clear()
                DDIM_MODULE.randn_tensor = randn_tensor
                try:
                    r = s.step(doutput, t, dsample, eta=eta,
                               generator=torch.Generator("cpu").manual_seed(ETA_SEED)).prev_sample
                finally:
                    DDIM_MODULE.randn_tensor = orig
                assert len(draws) == 1 and torch.equal(draws[0], noise), (name, n, eta)
                assert (r - plain).abs().max() > 0.01, (name, n, eta)
                st.add("ddim.%s.eta-%s.n%d.t%d.prev_sample" % (name, eta, n, int(t)), r, num_inference_steps=n,
                       timestep=int(t), eta=eta,
                       call="set_timesteps(%d); step(ddim.input.model_output, %d, ddim.input.sample, eta=%s, "
                            "generator=torch.Generator('cpu').manual_seed(%d)).prev_sample" % (n, int(t), eta, ETA_SEED))
    st.write()
    return {"lower_order_final_changes": {k: {"%d/%s" % nk: v for nk, v in d.items()} for k, d in report.items()}}


# ----------------------------------------------------------------------------------------------
# conv.tensor
# ----------------------------------------------------------------------------------------------
# (name, n, c, o, h, w, weight dtype): every case is a 3x3 convolution, stride 1, padding 1, with bias.
# diffedit's Conv2D.forward takes whole small images when oh*ow <= KernelPolicy.smallImagePixels (1024),
# F(2x2, 3x3) when larger and 2*c*o >= 160*(c + o) (so c = o = 160 at least), else bands of rows.
CONV_CASES = [
    ("small", 2, 5, 6, 9, 7, np.float32),          # 63 pixels: small images
    ("bands", 1, 4, 3, 37, 33, np.float32),        # 1221 pixels, few channels: bands
    ("winograd", 2, 160, 160, 9, 7, np.float16),   # enough channels for Winograd; odd sizes: partial tiles
]


def ref_conv(out, mf):
    st = mf.Stream(os.path.join(out, "conv.tensor"))
    for i, (name, n, c, o, h, w, wdt) in enumerate(CONV_CASES):
        g = torch.Generator("cpu").manual_seed(900 + i)
        x = torch.randn(n, c, h, w, generator=g)
        weight = torch.randn(o, c, 3, 3, generator=g) / (9 * c) ** 0.5
        bias = 0.1 * torch.randn(o, generator=g)
        if wdt == np.float16:
            weight = weight.to(torch.float16)  # stored as f16 (an SD fp16 checkpoint's bits); used widened
        wf = weight.to(torch.float32)
        y = F.conv2d(x, wf, bias, stride=1, padding=1)
        y64 = F.conv2d(x.double(), wf.double(), bias.double(), stride=1, padding=1)
        p = "conv.%s." % name
        st.add(p + "input", x, call="randn(%d,%d,%d,%d) #1 of torch.Generator('cpu').manual_seed(%d)" % (n, c, h, w, 900 + i))
        st.add(p + "weight", weight.numpy(), call="randn(%d,%d,3,3) #2 / sqrt(9*%d)%s" % (
            o, c, c, ", rounded to float16 (torch conv uses it widened to float32)" if wdt == np.float16 else ""))
        st.add(p + "bias", bias, call="0.1 * randn(%d) #3" % o)
        st.add(p + "output", y, call="torch.nn.functional.conv2d(input, weight.float(), bias, stride=1, padding=1), float32")
        st.add(p + "output.f64", y64.to(torch.float32),
               call="the same in float64, rounded to float32 (the exact result to float32 precision)",
               torch_f32_max_abs_error="%.3g" % float((y.double() - y64).abs().max()))
    st.write()


# ----------------------------------------------------------------------------------------------
# sd*/ref/eta-steps.tensor
# ----------------------------------------------------------------------------------------------
def ref_eta_steps(mf, pipe, st, key, spec, recs):
    """__call__ with DDIM and eta 1.0 on this run's DDIM stack and dense mask, every step recorded."""
    eta = 1.0
    steps = spec["steps"]
    src, tgt = spec["prompts"]
    inv = torch.from_numpy(recs["diffedit.inverted"].copy())
    mask = recs["diffedit.mask.dense"].astype(np.int64)  # what generate_mask returned
    draws = []
    orig = DDIM_MODULE.randn_tensor

    def randn_tensor(*a, **k):
        r = orig(*a, **k)
        draws.append(r.clone())
        return r
    cargs = dict(prompt=tgt, mask_image="eta.mask", image_latents="eta.inverted", negative_prompt=src,
                 num_inference_steps=steps, inpaint_strength=0.8, guidance_scale=7.5, eta=eta,
                 generator="torch.Generator('cpu').manual_seed(0), fresh for this call")
    DDIM_MODULE.randn_tensor = randn_tensor
    try:
        with mf.Capture(pipe) as cap:
            edited = pipe(prompt=tgt, mask_image=mask, image_latents=inv, negative_prompt=src,
                          num_inference_steps=steps, eta=eta, generator=torch.Generator("cpu").manual_seed(0),
                          output_type="latent").images
    finally:
        DDIM_MODULE.randn_tensor = orig
    ss, us = cap.get("step"), cap.get("unet")
    T = len(ss)
    assert T > 0 and len(us) == T and len(draws) == T
    assert not cap.get("randn.pipeline") and not cap.get("randn.posterior")
    g = torch.Generator("cpu").manual_seed(0)
    for d in draws:
        assert torch.equal(d, torch.randn(d.shape, generator=g)) and d.shape == inv[:, 0].shape
    for u, s in zip(us, ss):
        assert torch.equal(mf.cfg(u["out"], 7.5), s["model_output"])
    assert all(torch.equal(u["ehs"], us[0]["ehs"]) for u in us)
    st.add("eta.inverted", inv, call="= diffedit.inverted of this run: the stack the call edits")
    st.add("eta.mask", torch.from_numpy(recs["diffedit.mask.dense"].copy()), call="= diffedit.mask.dense of this run")
    st.add("eta.embeds", us[0]["ehs"], call="the UNet's encoder_hidden_states: [negative = source, prompt = target]")
    st.add("eta-1.0.call.timesteps", torch.stack([torch.as_tensor(s["t"]) for s in ss]).to(torch.int64),
           call="the timesteps of the steps (descending)")
    st.add("eta-1.0.call.variance_noise", torch.stack(draws),
           call="per step: randn_tensor(latents.shape, generator) inside DDIMScheduler.step")
    st.add("eta-1.0.call.eps", torch.stack([s["model_output"] for s in ss]), guidance_scale=7.5,
           call="per step: CFG prediction passed to scheduler.step")
    st.add("eta-1.0.call.step_out", torch.stack([s["prev"] for s in ss]),
           call="per step: scheduler.step(eps, t, latents, eta=1.0, generator).prev_sample")
    st.add("eta-1.0.call.latents", torch.stack([s["sample"] for s in ss[1:]] + [edited]),
           call="per step i: step_out[i]*mask + inverted[:, i]*(1-mask)")
    st.add("eta-1.0.edited.latents", edited, eta=eta, args_json=mf.jdump(dict(cargs, output_type="latent")),
           call='pipe(..., eta=1.0, output_type="latent").images')
    img = pipe(prompt=tgt, mask_image=mask, image_latents=inv, negative_prompt=src, num_inference_steps=steps,
               eta=eta, generator=torch.Generator("cpu").manual_seed(0), output_type="np").images
    st.add("eta-1.0.edited.u8", (img[0] * 255).round().astype(np.uint8), eta=eta,
           args_json=mf.jdump(dict(cargs, output_type="np")),
           call='(pipe(..., eta=1.0, output_type="np").images[0] * 255).round().astype(uint8), HWC')


def write_all(out, mf):
    """Everything of this module; `mf` is the make_fixtures module (its helpers and specs)."""
    report = {}
    for key, spec in mf.SPECS.items():
        print("[%s] eta 1.0, every step" % key)
        recs = {r[0]: r[4] for r in mf.read_stream(os.path.join(out, key, "ref", "diffedit.tensor"))}
        pipe = mf.load_reference_pipeline(key, spec, out)
        st = mf.Stream(os.path.join(out, key, "ref", "eta-steps.tensor"))
        ref_eta_steps(mf, pipe, st, key, spec, recs)
        st.write()
    print("[shared] DPM-Solver++ at 14/15/16 steps, DDIM eta steps, convolution paths")
    report.update(ref_scheduler_steps(out, mf))
    ref_conv(out, mf)
    return report

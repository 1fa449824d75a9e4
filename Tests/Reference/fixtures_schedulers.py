"""Fixtures for the DPM-Solver++ schedulers and DDIM's eta (issue 15, parts 2 and 3).

Called by make_fixtures.py after everything else (so the files it already writes do not change):

* `dpm-scheduler.tensor` (shared): diffusers' DPMSolverMultistepScheduler and
  DPMSolverMultistepInverseScheduler on their own, for a set of scheduler configs: timesteps and
  sigmas for several step counts, whole multistep runs (every step's prev_sample), add_noise.
* `sd1/ref/schedulers.tensor`, `sd2/ref/schedulers.tensor`: StableDiffusionDiffEditPipeline with
  those schedulers set (generate_mask, invert, __call__), and __call__ with DDIM's eta 0.5 and 1.0.

See Tests/Fixtures/README.md (sections 11 and 12) for every record.
"""
import os

import numpy as np
import PIL.Image
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepInverseScheduler, DPMSolverMultistepScheduler

import diffusers.schedulers.scheduling_ddim as DDIM_MODULE

GENERATED = ["dpm-scheduler.tensor"]  # plus sd1/ref/schedulers.tensor, sd2/ref/schedulers.tensor (inside sd1/, sd2/)

# Step counts of the pipeline fixtures: sd1 at 25 (second order throughout, the benchmark's range),
# sd2 at 10 (below 15: lower_order_final decides the last steps).
DPM_STEPS = {"sd1": 25, "sd2": 10}
ETAS = (0.5, 1.0)


def dpm_pair(source):
    """The user's recipe: DPMSolverMultistepScheduler.from_config(pipe.scheduler.config) and its
    inverse from the same config, where pipe.scheduler is the pipeline's DDIMScheduler loaded from a
    folder whose scheduler_config.json is `source`. Keys DDIM does not know are kept in its config;
    keys DDIM filled with its own defaults are marked (_use_default_values) and not passed on, so
    the DPM schedulers get their own defaults for keys the file lacks (timestep_spacing "linspace",
    not DDIM's "leading"): the result is the DPM schedulers' from_config of the file itself."""
    cfg = DDIMScheduler.from_config(source).config
    fwd, inv = DPMSolverMultistepScheduler.from_config(cfg), DPMSolverMultistepInverseScheduler.from_config(cfg)
    plain = lambda c: {k: v for k, v in dict(c).items() if not k.startswith("_")}  # noqa: E731
    assert plain(fwd.config) == plain(DPMSolverMultistepScheduler.from_config(source).config)
    assert plain(inv.config) == plain(DPMSolverMultistepInverseScheduler.from_config(source).config)
    return fwd, inv


def t_start(n, strength):
    return max(n - min(int(n * strength), n), 0)


# ----------------------------------------------------------------------------------------------
# dpm-scheduler.tensor
# ----------------------------------------------------------------------------------------------
def scheduler_variants(mf):
    sd1, sd2 = mf.SD1_SCHED, mf.SD2_SCHED
    # Stable Diffusion 1.5's own scheduler_config.json (a PNDM config without timestep_spacing).
    sd15_pndm = {"_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "beta_end": 0.012,
                 "beta_schedule": "scaled_linear", "beta_start": 0.00085, "num_train_timesteps": 1000,
                 "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None,
                 "clip_sample": False}
    return [
        ("sd1", dict(sd1)),
        ("sd2", dict(sd2)),
        ("sd15_pndm", sd15_pndm),
        ("trailing", dict(sd1, timestep_spacing="trailing")),
        ("linspace", dict(sd1, timestep_spacing="linspace")),
        ("offset0", dict(sd1, steps_offset=0)),
        ("linear", dict(sd1, beta_schedule="linear", beta_start=0.0001, beta_end=0.02)),
        ("sample", dict(sd1, prediction_type="sample")),
        ("order1", dict(sd1, solver_order=1)),
        ("order3", dict(sd1, solver_order=3)),
        ("heun", dict(sd1, solver_type="heun")),
        ("order3_vpred_trailing", dict(sd2, solver_order=3, timestep_spacing="trailing")),
        ("sigma_min", dict(sd1, final_sigmas_type="sigma_min")),
        ("no_lower_order_final", dict(sd1, lower_order_final=False, solver_order=3)),
        ("euler_at_final", dict(sd1, euler_at_final=True, final_sigmas_type="sigma_min")),
        ("cosine_clipped", dict(sd1, beta_schedule="squaredcos_cap_v2", lambda_min_clipped=-5.1)),
        ("cosine_clipped_trailing", dict(sd1, beta_schedule="squaredcos_cap_v2", lambda_min_clipped=-5.1,
                                         timestep_spacing="trailing")),
        ("cosine_clipped_linspace", dict(sd1, beta_schedule="squaredcos_cap_v2", lambda_min_clipped=-5.1,
                                         timestep_spacing="linspace")),
        # diffusers renames these to dpmsolver++ / midpoint (and, for "deis", insists on sigma_min)
        ("deis_names", dict(sd1, algorithm_type="deis", solver_type="logrho", final_sigmas_type="sigma_min")),
    ]


SCHED_STEPS = (50, 25, 20, 10, 7)
RUNS = ((20, 0.8), (7, 1.0))  # (num_inference_steps, strength): the pipeline's slices of the schedule


def ref_dpm_scheduler(out, mf):
    st = mf.Stream(os.path.join(out, "dpm-scheduler.tensor"))
    g = torch.Generator("cpu").manual_seed(4321)
    sample = torch.randn(2, 4, 2, 2, generator=g)
    model_outputs = torch.randn(20, 2, 4, 2, 2, generator=g)
    noise = torch.randn(2, 4, 2, 2, generator=g)
    st.add("dpm.input.sample", sample, call="randn(2,4,2,2) #1 of torch.Generator('cpu').manual_seed(4321)")
    st.add("dpm.input.model_output", model_outputs,
           call="randn(20,2,4,2,2) #2 of the same generator; step k of every run gets model_output[k]")
    st.add("dpm.input.noise", noise, call="randn(2,4,2,2) #3 of the same generator")
    for name, source in scheduler_variants(mf):
        fwd, inv = dpm_pair(source)
        c = fwd.config
        assert c.algorithm_type == "dpmsolver++" and c.timestep_spacing == source.get("timestep_spacing", "linspace")
        for key in ("solver_order", "solver_type", "lower_order_final", "final_sigmas_type", "euler_at_final"):
            if key in source and key != "solver_type":
                assert c[key] == source[key], (name, key)
        p = "dpm.%s." % name
        st.add(p + "alphas_cumprod", fwd.alphas_cumprod, source_json=mf.jdump(source),
               config_json=mf.config_json(fwd.config), inverse_config_json=mf.config_json(inv.config),
               call="DPMSolverMultistepScheduler.from_config(DDIMScheduler.from_config(source_json).config) "
                    "(= DPMSolverMultistepScheduler.from_config(source_json))")
        for n in SCHED_STEPS:
            fwd.set_timesteps(n)
            st.add(p + "timesteps.%d" % n, fwd.timesteps, call="set_timesteps(%d); timesteps" % n)
            st.add(p + "sigmas.%d" % n, fwd.sigmas, call="set_timesteps(%d); sigmas (one more than timesteps)" % n)
            inv.set_timesteps(n)
            st.add(p + "inverse.timesteps.%d" % n, inv.timesteps,
                   call="DPMSolverMultistepInverseScheduler.from_config(same); set_timesteps(%d); timesteps" % n)
            st.add(p + "inverse.sigmas.%d" % n, inv.sigmas, call="inverse set_timesteps(%d); sigmas" % n)
        def run(s, ts):
            """Every step's x over the timesteps ts, from dpm.input.sample."""
            x, outs = sample, []
            for k, t in enumerate(ts):
                x = s.step(model_outputs[k], t, x).prev_sample
                outs.append(x)
            return torch.stack(outs)
        for n, strength in RUNS:
            s0 = t_start(n, strength)
            fwd.set_timesteps(n)
            ts = fwd.timesteps[s0:]
            st.add(p + "run.n%d.s%s" % (n, strength), run(fwd, ts), timesteps_json=mf.jdump(ts.tolist()),
                   call="set_timesteps(%d); for k, t in enumerate(timesteps[%d:]): x = step(model_output[k], t, x)"
                        ".prev_sample, starting from dpm.input.sample; every step's x" % (n, s0))
            inv.set_timesteps(n)
            its = inv.timesteps if s0 == 0 else inv.timesteps[:-s0]
            st.add(p + "inverse.run.n%d.s%s" % (n, strength), run(inv, its), timesteps_json=mf.jdump(its.tolist()),
                   call="inverse: set_timesteps(%d); the first %d timesteps; x = step(model_output[k], t, x)"
                        ".prev_sample from dpm.input.sample; every step's x" % (n, len(its)))
        fwd.set_timesteps(20)
        add_t = fwd.timesteps[[4, 13]]
        st.add(p + "add_noise", fwd.add_noise(sample, noise, add_t), timesteps_json=mf.jdump(add_t.tolist()),
               call="set_timesteps(20); add_noise(dpm.input.sample, dpm.input.noise, timesteps[[4, 13]])")
    st.write()


# ----------------------------------------------------------------------------------------------
# sd*/ref/schedulers.tensor
# ----------------------------------------------------------------------------------------------
def fix_add_noise_for_0d_timestep(scheduler):
    """diffusers 0.42.1's generate_mask passes a 0-dim timestep to scheduler.add_noise, which
    DPMSolverMultistepScheduler iterates over ("iteration over a 0-d tensor"): with that scheduler
    generate_mask raises. The smallest fix: give add_noise the same timestep as a 1-element tensor.
    (Set as an instance attribute; Capture wraps it and removes it again on exit.)"""
    orig = type(scheduler).add_noise.__get__(scheduler)

    def add_noise(original_samples, noise, timesteps):
        return orig(original_samples, noise, timesteps.reshape(-1))
    scheduler.add_noise = add_noise


def dpm_mask(mf, pipe, spec, pil, src, tgt, steps, gs, ratio):
    fix_add_noise_for_0d_timestep(pipe.scheduler)
    return mf.ref_mask(pipe, spec, pil, src, tgt, steps, gs, ratio)


def ref_dpm_pipeline(mf, pipe, st, key, spec, cat):
    steps = DPM_STEPS[key]
    src, tgt = spec["prompts"]
    gs = 7.5
    pil = PIL.Image.fromarray(cat)
    gen_desc = "torch.Generator('cpu').manual_seed(0), fresh for this call"
    pipe.scheduler, pipe.inverse_scheduler = dpm_pair(pipe.scheduler.config)
    recipe = ("pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config); "
              "pipe.inverse_scheduler = DPMSolverMultistepInverseScheduler.from_config(pipe.scheduler.config)")
    stats = {}

    # generate_mask (with the add_noise fix), default ratio and the dense one
    margs = dict(image="cat.ppm (PIL RGB)", source_prompt=src, target_prompt=tgt, num_inference_steps=steps,
                 num_maps_per_mask=10, mask_encode_strength=0.5, mask_thresholding_ratio=3.0, guidance_scale=gs,
                 output_type="np", generator=gen_desc)
    r = dpm_mask(mf, pipe, spec, pil, src, tgt, steps, gs, 3.0)
    st.add("dpm.mask.embeds", r["embeds"], call="as diffedit.mask.embeds: [source, '', target, ''] (this run)")
    st.add("dpm.mask.timestep", torch.as_tensor(r["an"]["t"]).to(torch.int64),
           call="DPM scheduler.set_timesteps(steps); get_timesteps(steps, 0.5)[0][0]")
    st.add("dpm.mask.noised_latents", r["an"]["out"],
           call="DPM add_noise(image_latents, noise, timestep) (timestep reshaped to [1], see README)")
    st.add("dpm.mask.map", r["gmap"], call="as diffedit.mask.map")
    st.add("dpm.mask.soft", r["soft"], min_abs_soft_minus_half="%.6g" % r["margin"], call="as diffedit.mask.soft")
    st.add("dpm.mask", r["mask_t"].to(torch.float32), fraction_ones="%.6g" % float(r["mask_t"].float().mean()),
           args_json=mf.jdump(margs), scheduler=recipe, call="pipe.generate_mask(...) with the DPM scheduler")
    r2 = dpm_mask(mf, pipe, spec, pil, src, tgt, steps, gs, mf.DENSE_RATIO)
    assert torch.equal(r2["gmap"], r["gmap"])
    st.add("dpm.mask.dense.soft", r2["soft"], min_abs_soft_minus_half="%.6g" % r2["margin"],
           call="as dpm.mask.soft with mask_thresholding_ratio=%s" % mf.DENSE_RATIO)
    st.add("dpm.mask.dense", r2["mask_t"].to(torch.float32), fraction_ones="%.6g" % float(r2["mask_t"].float().mean()),
           args_json=mf.jdump(dict(margs, mask_thresholding_ratio=mf.DENSE_RATIO)), call="pipe.generate_mask(...)")
    stats["dpm_mask_timestep"] = int(r["an"]["t"])
    stats["dpm_mask_margins"] = (r["margin"], r2["margin"])
    stats["dpm_mask_fractions"] = (float(r["mask_t"].float().mean()), float(r2["mask_t"].float().mean()))

    # invert with DPMSolverMultistepInverseScheduler
    iargs = dict(prompt=src, image="cat.ppm (PIL RGB)", num_inference_steps=steps, inpaint_strength=0.8,
                 guidance_scale=gs, negative_prompt=None, num_reg_steps=0, generator=gen_desc)
    with mf.Capture(pipe) as cap:
        inv = pipe.invert(prompt=src, image=pil, num_inference_steps=steps,
                          generator=torch.Generator("cpu").manual_seed(0)).latents
    us, ss = cap.get("unet"), cap.get("istep")
    assert ss and len(us) == len(ss)
    for uu, s in zip(us, ss):
        assert torch.equal(mf.cfg(uu["out"], gs), s["model_output"])
    assert torch.equal(inv[0], torch.stack([s["prev"] for s in ss])[:, 0].flip(0))
    st.add("dpm.invert.image_latents", cap.get("image_latents")[0],
           call="latent_dist.sample(generator) * scaling_factor (input of the first step; this run)")
    ts = torch.stack([torch.as_tensor(s["t"]) for s in ss]).to(torch.int64)
    st.add("dpm.invert.timesteps", ts, call="DPM inverse set_timesteps(steps); get_inverse_timesteps(steps, 0.8)[0]")
    st.add("dpm.invert.eps", torch.stack([s["model_output"] for s in ss]), guidance_scale=gs,
           call="per step: CFG prediction passed to inverse_scheduler.step")
    st.add("dpm.inverted", inv, args_json=mf.jdump(iargs), scheduler=recipe, num_timesteps=len(ss),
           call="pipe.invert(...).latents, noisiest first")

    # __call__ with DPMSolverMultistepScheduler, the dense DPM mask
    mask = r2["mask"]
    cargs = dict(prompt=tgt, mask_image="dpm.mask.dense", image_latents="dpm.inverted", negative_prompt=src,
                 num_inference_steps=steps, inpaint_strength=0.8, guidance_scale=gs, eta=0.0, generator=gen_desc)
    with mf.Capture(pipe) as cap:
        edited = pipe(prompt=tgt, mask_image=mask, image_latents=inv, negative_prompt=src, num_inference_steps=steps,
                      generator=torch.Generator("cpu").manual_seed(0), output_type="latent").images
    ss = cap.get("step")
    assert not cap.get("randn.pipeline") and torch.equal(ss[0]["sample"], inv[:, 0])
    st.add("dpm.call.timesteps", torch.stack([torch.as_tensor(s["t"]) for s in ss]).to(torch.int64),
           call="DPM set_timesteps(steps); get_timesteps(steps, 0.8)[0] (descending)")
    st.add("dpm.call.eps", torch.stack([s["model_output"] for s in ss]), call="per step: CFG prediction passed to step")
    st.add("dpm.call.step_out", torch.stack([s["prev"] for s in ss]), call="per step: scheduler.step(...).prev_sample")
    st.add("dpm.call.latents", torch.stack([s["sample"] for s in ss[1:]] + [edited]),
           call="per step i: step_out[i]*mask + inverted[:, i]*(1-mask)")
    st.add("dpm.edited.latents", edited, args_json=mf.jdump(dict(cargs, output_type="latent")), scheduler=recipe,
           call='pipe(..., output_type="latent").images')
    img = pipe(prompt=tgt, mask_image=mask, image_latents=inv, negative_prompt=src, num_inference_steps=steps,
               generator=torch.Generator("cpu").manual_seed(0), output_type="np").images
    st.add("dpm.edited.u8", (img[0] * 255).round().astype(np.uint8), args_json=mf.jdump(dict(cargs, output_type="np")),
           call='(pipe(..., output_type="np").images[0] * 255).round().astype(uint8), HWC')
    return stats


def ref_eta(mf, pipe, st, key, spec, recs):
    """__call__ with DDIM and eta > 0 on the committed DDIM stack and dense mask."""
    steps = spec["steps"]
    src, tgt = spec["prompts"]
    inv = torch.from_numpy(recs["diffedit.inverted"])
    mask = recs["diffedit.mask.dense"].astype(np.int64)  # what generate_mask returned
    draws = []
    orig = DDIM_MODULE.randn_tensor

    def randn_tensor(*a, **k):
        r = orig(*a, **k)
        draws.append(r.clone())
        return r
    # The inputs, as this run computed them (so that the file is self-contained wherever it is made)
    st.add("eta.inverted", inv, call="= diffedit.inverted of this run: the stack every eta call edits")
    st.add("eta.mask", torch.from_numpy(recs["diffedit.mask.dense"]), call="= diffedit.mask.dense of this run")
    for eta in ETAS:
        tag = "eta-%s." % eta
        cargs = dict(prompt=tgt, mask_image="eta.mask", image_latents="eta.inverted",
                     negative_prompt=src, num_inference_steps=steps, inpaint_strength=0.8, guidance_scale=7.5,
                     eta=eta, generator="torch.Generator('cpu').manual_seed(0), fresh for this call")
        draws.clear()
        DDIM_MODULE.randn_tensor = randn_tensor
        try:
            with mf.Capture(pipe) as cap:
                edited = pipe(prompt=tgt, mask_image=mask, image_latents=inv, negative_prompt=src,
                              num_inference_steps=steps, eta=eta, generator=torch.Generator("cpu").manual_seed(0),
                              output_type="latent").images
        finally:
            DDIM_MODULE.randn_tensor = orig
        ss = cap.get("step")
        T = len(ss)
        # The only draws of __call__: one randn of the latents' shape per step, in step order, all from
        # the call's generator.
        assert len(draws) == T and not cap.get("randn.pipeline") and not cap.get("randn.posterior")
        g = torch.Generator("cpu").manual_seed(0)
        for d in draws:
            assert torch.equal(d, torch.randn(d.shape, generator=g)) and d.shape == inv[:, 0].shape
        if eta == ETAS[0]:
            st.add(tag + "call.variance_noise", torch.stack(draws),
                   call="per step: randn_tensor(latents.shape, generator) inside DDIMScheduler.step (eta > 0)")
            st.add(tag + "call.step_out", torch.stack([s["prev"] for s in ss]),
                   call="per step: scheduler.step(eps, t, latents, eta=%s, generator).prev_sample" % eta)
        st.add(tag + "call.latents", torch.stack([s["sample"] for s in ss[1:]] + [edited]),
               call="per step i: step_out[i]*mask + inverted[:, i]*(1-mask)")
        st.add(tag + "edited.latents", edited, eta=eta, args_json=mf.jdump(dict(cargs, output_type="latent")),
               call='pipe(..., eta=%s, output_type="latent").images' % eta)
        img = pipe(prompt=tgt, mask_image=mask, image_latents=inv, negative_prompt=src, num_inference_steps=steps,
                   eta=eta, generator=torch.Generator("cpu").manual_seed(0), output_type="np").images
        st.add(tag + "edited.u8", (img[0] * 255).round().astype(np.uint8), eta=eta,
               args_json=mf.jdump(dict(cargs, output_type="np")),
               call='(pipe(..., eta=%s, output_type="np").images[0] * 255).round().astype(uint8), HWC' % eta)


def write_all(out, mf):
    """Everything of this module; `mf` is the make_fixtures module (its helpers and specs)."""
    report = {}
    for key, spec in mf.SPECS.items():
        print("[%s] scheduler fixtures (DDIM eta, DPM-Solver++)" % key)
        recs = {r[0]: r[4] for r in mf.read_stream(os.path.join(out, key, "ref", "diffedit.tensor"))}
        pipe = mf.load_reference_pipeline(key, spec, out)
        cat, _ = mf.make_cat(spec)
        st = mf.Stream(os.path.join(out, key, "ref", "schedulers.tensor"))
        ref_eta(mf, pipe, st, key, spec, recs)
        report[key + ".dpm"] = ref_dpm_pipeline(mf, pipe, st, key, spec, cat)
        st.write()
    ref_dpm_scheduler(out, mf)
    return report

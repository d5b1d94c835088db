"""ConditionalClassifier against a direct formulation written here; both kernel layouts, the
layout converter and the original layout's provenance quirk (reference condnet.md section 2)."""
import torch
import torch.nn.functional as F

from dl_lib.modeling.condnet.conditional_classifier import (ConditionalClassifier,
                                                            convert_kernel_layout,
                                                            layout_permutation)


def _direct(m: ConditionalClassifier, x: torch.Tensor):
    """The original's steps with explicit loops / matmuls (eval mode: no dropout)."""
    n, c, h, w = x.shape
    k = m.num_classes
    g = F.conv2d(x, m.guidance_project.weight, m.guidance_project.bias)
    p = g.softmax(1).reshape(n, k, h * w)
    centres = torch.stack([p[i] @ x[i].reshape(c, h * w).t() for i in range(n)]) / (h * w)
    gen = F.conv2d(centres.reshape(n, k * c, 1, 1), m.filter_project.weight,
                   m.filter_project.bias, groups=k).reshape(n, -1)
    outs = []
    for i in range(n):
        if m.layout == "original":          # positional slicing of the flat vector
            wt, b = gen[i, :k * c].reshape(k, c), gen[i, k * c:]
        else:                               # per class group: C weights then the bias
            per = gen[i].reshape(k, c + 1)
            wt, b = per[:, :c], per[:, c]
        # the original's grouped conv over the batch, one image at a time
        outs.append(F.conv2d(x[i:i + 1], wt.reshape(k, c, 1, 1), b))
    return torch.cat(outs), g, centres


def test_class_centres_and_dynamic_kernels_match_direct_formulation():
    torch.manual_seed(0)
    x = torch.randn(2, 6, 5, 7)
    for layout in ("clean", "original"):
        m = ConditionalClassifier(6, 4, layout=layout).eval()
        logits, guidance = m(x)
        ref_logits, ref_g, ref_centres = _direct(m, x)
        assert logits.shape == guidance.shape == (2, 4, 5, 7)
        torch.testing.assert_close(guidance, ref_g)
        torch.testing.assert_close(m.class_centres(x, guidance), ref_centres)
        torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-5)


def test_layouts_differ_and_two_dynamic_layers():
    torch.manual_seed(1)
    x = torch.randn(1, 6, 4, 4)
    a = ConditionalClassifier(6, 3, layout="clean").eval()
    b = ConditionalClassifier(6, 3, layout="original").eval()
    b.load_state_dict(a.state_dict())
    assert not torch.allclose(a(x)[0], b(x)[0])
    # two layers: K×C then ReLU then K×K, biases per layer; clean group k = [C, K, 1, 1]
    m = ConditionalClassifier(6, 3, layout="clean", num_layers=2).eval()
    assert m.filter_project.out_channels == 3 * (6 + 3 + 2)
    g = m.guidance_project(x)
    e = m.class_centres(x, g)
    gen = m.filter_project(e.reshape(1, 18, 1, 1)).reshape(3, 11)
    w0, w1, b0, b1 = gen[:, :6], gen[:, 6:9], gen[:, 9], gen[:, 10]
    h = torch.einsum("kc,chw->khw", w0, x[0]) + b0[:, None, None]
    ref = torch.einsum("kj,jhw->khw", w1, h.relu()) + b1[:, None, None]
    torch.testing.assert_close(m(x)[0][0], ref, rtol=1e-5, atol=1e-5)


def _provenance(layout: str, c: int, k: int):
    """For every generated number, the index of the class centre (group) it came from."""
    m = ConditionalClassifier(c, k, layout=layout, dropout=0.0)
    with torch.no_grad():
        m.filter_project.weight.fill_(1.0 / c)
        m.filter_project.bias.zero_()
        centres = torch.arange(k, dtype=torch.float32)[None, :, None].expand(1, k, c)
        weights, biases = m.dynamic_params(centres.contiguous())
    return weights[0][0].round().long(), biases[0][0].round().long()


def test_original_layout_reproduces_the_quirk():
    w, b = _provenance("original", 512, 150)

    def groups(cls):
        values, counts = w[cls].unique(return_counts=True)
        return dict(zip(values.tolist(), counts.tolist()))

    assert groups(0) == {0: 512}
    assert groups(1) == {0: 1, 1: 511}
    assert groups(2) == {1: 2, 2: 510}
    assert groups(75) == {74: 75, 75: 437}
    assert groups(149) == {148: 149, 149: 363}
    assert b.tolist() == [149] * 150
    w, b = _provenance("clean", 512, 150)
    assert torch.equal(w, torch.arange(150)[:, None].expand(150, 512))
    assert b.tolist() == list(range(150))


def test_kernel_layout_converter():
    torch.manual_seed(2)
    c, k = 5, 4
    orig = ConditionalClassifier(c, k, layout="original").eval()
    sd = orig.state_dict()
    clean_sd = convert_kernel_layout(sd, "original", "clean", num_classes=k)
    back = convert_kernel_layout(clean_sd, "clean", "original", num_classes=k)
    for key in sd:
        torch.testing.assert_close(back[key], sd[key])
    assert not torch.equal(clean_sd["filter_project.weight"], sd["filter_project.weight"])
    # each row keeps its role: with equal class centres (uniform guidance) both compute the same
    clean = ConditionalClassifier(c, k, layout="clean").eval()
    clean.load_state_dict(clean_sd)
    with torch.no_grad():
        for m in (orig, clean):
            m.guidance_project.weight.zero_()
            m.guidance_project.bias.zero_()
    x = torch.randn(2, c, 3, 4)
    torch.testing.assert_close(clean(x)[0], orig(x)[0], rtol=1e-5, atol=1e-6)
    # a model left in the wrong layout does not
    wrong = ConditionalClassifier(c, k, layout="clean").eval()
    wrong.load_state_dict(orig.state_dict())
    assert not torch.allclose(wrong(x)[0], orig(x)[0], atol=1e-4)
    # permutation: bias of class 0 (original position K*C) sits after class 0's weights
    perm = layout_permutation(c, k)
    assert perm[c].item() == k * c and perm[:c].tolist() == list(range(c))


def test_bad_layout_and_shapes_are_clear_errors():
    import pytest

    with pytest.raises(ValueError, match="kernel layout"):
        ConditionalClassifier(4, 2, layout="mmseg")
    with pytest.raises(ValueError, match="rows"):
        convert_kernel_layout(ConditionalClassifier(4, 2).state_dict(), "clean", "original",
                              num_classes=3)
    with pytest.raises(ValueError, match="features"):
        ConditionalClassifier(4, 2)(torch.randn(1, 3, 2, 2))


def test_traceable():
    """The original's ``(H·W)**-1`` on a traced size broke torch.jit.trace (reference section 6)."""
    torch.manual_seed(3)
    m = ConditionalClassifier(6, 3, layout="original").eval()
    x = torch.randn(1, 6, 5, 4)
    traced = torch.jit.trace(m, (x,), check_trace=False)
    for got, want in zip(traced(x), m(x)):
        torch.testing.assert_close(got, want)

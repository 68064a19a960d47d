"""The operators a model file's code may call: pure tensor math, shapes, control flow. Nothing else.

TorchScript archives and `torch.export` programs carry code as operator calls. Most operators
compute on tensors; a few reach the outside world (`aten::from_file` creates or overwrites a
file, `aten::save` writes one, `prim::Print` writes to the terminal, custom `ops.<ns>.*` and
`torch.classes.*` run native code loaded by a library). So the check is an allowlist: an
operator that is not listed here is refused, whether or not anyone knew it was dangerous.

The list started from `benchmarks/filesafety_operator_survey.py` (the operators torchvision's
classic models, poisonguard's architectures, recurrent and attention layers use when scripted,
traced and exported) plus the pure math, comparison and shape operators around them; each name
was read by hand. Nothing here reads or writes files, processes, the network, random seeds or
process-wide settings.
"""

from __future__ import annotations

_ELEMENTWISE = """
abs absolute acos acosh add addcdiv addcmul angle asin asinh atan atan2 atanh bitwise_and bitwise_not
bitwise_or bitwise_xor ceil clamp clamp_max clamp_min clip copysign cos cosh deg2rad div divide erf erfc
erfinv exp exp2 expm1 fix float_power floor floor_divide fmax fmin fmod frac hypot lerp lgamma log log10
log1p log2 logaddexp logical_and logical_not logical_or logical_xor logit maximum minimum mul multiply
nan_to_num neg negative pow rad2deg reciprocal remainder round rsqrt sgn sign signbit sin sinc sinh sqrt
square sub subtract tan tanh true_divide trunc where xlogy rsub
"""
_ACTIVATIONS = """
celu elu gelu glu hardshrink hardsigmoid hardswish hardtanh leaky_relu log_sigmoid log_softmax logsigmoid
mish prelu relu relu6 rrelu selu sigmoid silu softmax softmin softplus softshrink tanhshrink threshold
_softmax _log_softmax
"""
_NN = """
adaptive_avg_pool1d adaptive_avg_pool2d adaptive_avg_pool3d adaptive_max_pool1d adaptive_max_pool2d
adaptive_max_pool3d avg_pool1d avg_pool2d avg_pool3d max_pool1d max_pool2d max_pool3d
max_pool1d_with_indices max_pool2d_with_indices max_pool3d_with_indices lp_pool1d lp_pool2d
batch_norm instance_norm layer_norm group_norm native_batch_norm native_layer_norm native_group_norm
_native_batch_norm_legit _native_batch_norm_legit_no_training _native_batch_norm_legit_functional rms_norm
conv1d conv2d conv3d conv_transpose1d conv_transpose2d conv_transpose3d convolution _convolution
linear bilinear matmul mm bmm addmm addmv addbmm baddbmm mv dot einsum outer t
dropout dropout_ alpha_dropout feature_dropout feature_alpha_dropout native_dropout
embedding embedding_bag lstm gru rnn_tanh rnn_relu lstm_cell gru_cell rnn_tanh_cell rnn_relu_cell
scaled_dot_product_attention _scaled_dot_product_flash_attention_for_cpu _native_multi_head_attention
_transformer_encoder_layer_fwd _nested_tensor_from_mask _nested_tensor_from_mask_left_aligned to_padded_tensor
pad constant_pad_nd reflection_pad1d reflection_pad2d replication_pad1d replication_pad2d
upsample_nearest1d upsample_nearest2d upsample_nearest3d upsample_bilinear2d upsample_bicubic2d
upsample_linear1d upsample_trilinear3d _upsample_nearest_exact1d _upsample_nearest_exact2d
_upsample_nearest_exact3d _upsample_bilinear2d_aa _upsample_bicubic2d_aa _upsample_lanczos2d_aa
pixel_shuffle pixel_unshuffle channel_shuffle grid_sampler affine_grid_generator
normalize cosine_similarity pairwise_distance cdist pdist one_hot
cross_entropy_loss nll_loss mse_loss l1_loss smooth_l1_loss binary_cross_entropy binary_cross_entropy_with_logits
"""
_REDUCTIONS = """
all amax amin any argmax argmin cummax cummin cumprod cumsum logcumsumexp logsumexp max mean median min
nanmean nansum norm frobenius_norm prod std std_mean sum var var_mean topk sort argsort kthvalue mode count_nonzero
linalg_vector_norm linalg_norm
"""
_SHAPES = """
alias as_strided broadcast_tensors broadcast_to cat chunk clone column_stack concat concatenate contiguous
detach diag diagonal diag_embed dsplit expand expand_as flatten flip fliplr flipud gather hsplit hstack
index index_put index_put_ index_select masked_fill masked_fill_ masked_select masked_scatter movedim moveaxis narrow
numel permute repeat repeat_interleave reshape reshape_as roll rot90 scatter scatter_add select slice split
split_with_sizes squeeze stack swapaxes swapdims take tensor_split tile transpose tril triu unbind unflatten
unfold unsqueeze view view_as vsplit vstack size stride dim len storage_offset _reshape_alias _unsafe_view
unsafe_chunk unsafe_split expand_copy view_copy permute_copy slice_copy select_copy squeeze_copy unsqueeze_copy
t_copy transpose_copy alias_copy sym_size sym_stride sym_numel sym_storage_offset
"""
_CREATION = """
arange empty empty_like empty_strided full full_like linspace logspace ones ones_like scalar_tensor tensor
zeros zeros_like eye new_empty new_full new_ones new_zeros new_empty_strided lift_fresh_copy lift_fresh
_to_copy to type_as copy_ fill_ zero_ _assert_tensor_metadata _assert_scalar sym_constrain_range_for_size
sym_constrain_range _assert_async
"""
_COMPARE = """
eq ne lt le gt ge equal allclose isclose isfinite isinf isnan isneginf isposinf is_nonzero
is_floating_point is_complex is_same_size __is__ __isnot__ __not__ __and__ __or__ __xor__ __contains__
__getitem__ __round_to_zero_floordiv __lshift__ __rshift__ __iand__ __ior__ __ixor__
"""
# TorchScript's own builtins on lists, strings, numbers and dicts (aten:: in its graphs).
_SCRIPT_BUILTINS = """
Bool Float Int IntImplicit FloatImplicit ScalarImplicit Complex ComplexImplicit str append extend insert pop
remove clear copy reverse list keys values items get setdefault update __range_length __derive_index
format join split strip lower upper startswith endswith replace isdigit floordiv floor_divide divmod
mathremainder modf gcd factorial log is_autocast_enabled is_grad_enabled warn
item tolist _set_item dict __upsample __interpolate _infer_size broadcast_shapes requires_grad_ _dim_arange device
"""
_PRIM = """
Constant GetAttr SetAttr ListConstruct ListUnpack ListIndex TupleConstruct TupleUnpack TupleIndex TupleSlice
DictConstruct DictIndex If Loop RaiseException Uninitialized unchecked_cast unchecked_unwrap_optional
NumToTensor device dtype shape layout type is_cuda is_cpu is_nested is_sparse is_quantized is_meta is_mkldnn
is_xpu is_mps requires_grad data isinstance min max abs ConstantChunk ImplicitTensorToNum StringIndex
EnumName EnumValue layout AutogradZero AutogradAdd AutogradAnyNonZero BroadcastSizes rangelist tolist
Param Return Guard BailOut TypeCheck RequiresGradCheck name unchecked_cast AutogradAllNonZero
"""

ALLOWED_OPERATORS: frozenset[str] = frozenset(
    {f"aten::{name}" for block in (_ELEMENTWISE, _ACTIVATIONS, _NN, _REDUCTIONS, _SHAPES, _CREATION, _COMPARE,
                                   _SCRIPT_BUILTINS) for name in block.split()}
    | {f"aten::{name}_" for name in (_ELEMENTWISE + _ACTIVATIONS).split()}  # in-place forms change a tensor only
    | {f"prim::{name}" for name in _PRIM.split()}
)

# Python-level targets a torch.export graph may name besides operators.
ALLOWED_EXPORT_TARGETS: frozenset[str] = frozenset({"_operator.getitem", "operator.getitem"})


def is_allowed_operator(name: str) -> bool:
    """`name` as a graph node kind (`aten::linear`), an export target (`torch.ops.aten.linear.default`) or survey label."""
    return normalise_operator(name) in ALLOWED_OPERATORS or name in ALLOWED_EXPORT_TARGETS


def normalise_operator(name: str) -> str:
    """`torch.ops.aten.add.Tensor` / `aten.add.Tensor` / `aten::add.out` -> `aten::add`."""
    if "::" in name:
        namespace, _, op = name.partition("::")
        return f"{namespace}::{op.split('.')[0]}"
    parts = name.split(".")
    if parts[:2] == ["torch", "ops"]:
        parts = parts[2:]
    if len(parts) >= 2:
        return f"{parts[0]}::{parts[1]}"
    return name

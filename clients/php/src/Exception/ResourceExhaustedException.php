<?php

declare(strict_types=1);

namespace Plasm\Exception;

/**
 * RESOURCE_EXHAUSTED: the node is busy, or the module or input is too large
 * (reasons ERROR_REASON_BUSY, ERROR_REASON_MODULE_TOO_LARGE,
 * ERROR_REASON_INPUT_TOO_LARGE).
 */
class ResourceExhaustedException extends RpcException
{
}

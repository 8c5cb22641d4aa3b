<?php

declare(strict_types=1);

namespace Plasm\Exception;

/**
 * INVALID_ARGUMENT: the node refused the request (reasons
 * ERROR_REASON_INVALID_REQUEST, ERROR_REASON_MODULE_HASH_MISMATCH,
 * ERROR_REASON_LIMITS_TOO_HIGH, ERROR_REASON_INVALID_PAGE_TOKEN).
 */
class InvalidArgumentException extends RpcException
{
}

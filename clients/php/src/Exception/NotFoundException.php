<?php

declare(strict_types=1);

namespace Plasm\Exception;

/**
 * NOT_FOUND: no such receipt, job, module or peer (reasons
 * ERROR_REASON_RECEIPT_NOT_FOUND, ERROR_REASON_JOB_NOT_FOUND,
 * ERROR_REASON_MODULE_NOT_FOUND, ERROR_REASON_PEER_NOT_FOUND).
 */
class NotFoundException extends RpcException
{
}
